-- What tasks/privileges.yml would change in the current database, in one row:
-- todo names the wanted privileges that are missing, the forbidden ones that
-- are there and the owner's existing tables and sequences a role lacks a
-- privilege on; grants lists those grants for postgresql_privs.
-- Privileges are tokens, as __postgresql_privilege_checks builds them:
--   db:<grantee>:<privilege>
--   schema:<schema>:<grantee>:<privilege>
--   default:<owner>:<schema>:<r|S>:<grantee>:<privilege>   (ALTER DEFAULT PRIVILEGES)
-- with PUBLIC as the grantee of grants to everyone. Explicit grants only:
-- a privilege a role gets through membership does not count.
WITH have AS (
  SELECT 'db:' || coalesce(r.rolname, 'PUBLIC') || ':' || a.privilege_type AS token
  FROM pg_database d
  CROSS JOIN LATERAL aclexplode(coalesce(d.datacl, acldefault('d', d.datdba))) a
  LEFT JOIN pg_roles r ON r.oid = a.grantee
  WHERE d.datname = current_database()
  UNION ALL
  SELECT 'schema:' || n.nspname || ':' || coalesce(r.rolname, 'PUBLIC') || ':' || a.privilege_type
  FROM pg_namespace n
  CROSS JOIN LATERAL aclexplode(coalesce(n.nspacl, acldefault('n', n.nspowner))) a
  LEFT JOIN pg_roles r ON r.oid = a.grantee
  UNION ALL
  SELECT 'default:' || pg_get_userbyid(da.defaclrole) || ':' || n.nspname || ':' || da.defaclobjtype::text
         || ':' || coalesce(r.rolname, 'PUBLIC') || ':' || a.privilege_type
  FROM pg_default_acl da
  JOIN pg_namespace n ON n.oid = da.defaclnamespace
  CROSS JOIN LATERAL aclexplode(da.defaclacl) a
  LEFT JOIN pg_roles r ON r.oid = a.grantee
),
missing AS (
  SELECT jsonb_array_elements_text(%(want)s::jsonb) AS token
  EXCEPT
  SELECT token FROM have
),
present_forbidden AS (
  SELECT token FROM have
  INTERSECT
  SELECT jsonb_array_elements_text(%(forbidden)s::jsonb)
),
object_grants AS (
  SELECT og.ord, og.g FROM jsonb_array_elements(%(objects)s::jsonb) WITH ORDINALITY AS og(g, ord)
),
lacking AS (
  SELECT og.ord, c.relname
  FROM object_grants og
  JOIN pg_roles r ON r.rolname = og.g ->> 'role'
  JOIN pg_namespace n ON n.nspname = og.g ->> 'schema'
  JOIN pg_class c ON c.relnamespace = n.oid
   AND pg_get_userbyid(c.relowner) = og.g ->> 'owner'
   AND c.relkind = ANY (CASE WHEN og.g ->> 'kind' = 'sequence' THEN '{S}' ELSE '{r,p,v,m,f}' END::"char"[])
  WHERE EXISTS (
    SELECT 1 FROM jsonb_array_elements_text(og.g -> 'privs') p(priv)
    WHERE NOT CASE WHEN c.relkind = 'S' THEN has_sequence_privilege(r.oid, c.oid, p.priv)
                   ELSE has_table_privilege(r.oid, c.oid, p.priv) END)
),
-- One grant per object grant with objects lacking it: {db, schema, kind,
-- role, privs, objs (comma-separated names)}, for postgresql_privs.
grants AS (
  SELECT og.ord, og.g || jsonb_build_object('db', current_database(),
                                            'objs', string_agg(l.relname, ',' ORDER BY l.relname)) AS grant_
  FROM object_grants og JOIN lacking l USING (ord)
  GROUP BY og.ord, og.g
)
SELECT ARRAY(SELECT 'missing ' || token FROM missing ORDER BY 1)
       || ARRAY(SELECT 'forbidden ' || token FROM present_forbidden ORDER BY 1)
       || ARRAY(SELECT (grant_ ->> 'role') || ' lacks '
                       || (SELECT string_agg(priv, ',') FROM jsonb_array_elements_text(grant_ -> 'privs') p(priv)) || ' on ' || (grant_ ->> 'schema')
                       || '.' || (grant_ ->> 'objs') FROM grants ORDER BY ord)
       -- A role that does not exist yet (check mode before it is created).
       || ARRAY(SELECT DISTINCT 'no role ' || (g ->> 'role') FROM object_grants
                WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = g ->> 'role')) AS todo,
       coalesce((SELECT jsonb_agg(grant_ ORDER BY ord) FROM grants), '[]'::jsonb) AS grants
