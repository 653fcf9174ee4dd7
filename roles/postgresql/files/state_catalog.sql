-- The part of the catalog the role manages, as one digest (the role's
-- one-read no-op check, tasks/main.yml): roles with their attributes and
-- passwords, memberships, databases with their owners, ACLs and encoding,
-- and in the database it runs in: schemas, tables and sequences with their
-- ACLs, default privileges and extensions. A change made by hand (a REVOKE,
-- a dropped extension, a new password) changes it; so do the app's
-- migrations (new tables: the role then checks their privileges once).
SELECT md5(string_agg(item, E'\n' ORDER BY item)) FROM (
  SELECT concat_ws(':', 'role', rolname, rolsuper, rolinherit, rolcreaterole, rolcreatedb, rolcanlogin,
                   rolreplication, rolbypassrls, rolconnlimit, rolvaliduntil, md5(coalesce(rolpassword, '')))
    FROM pg_authid
  UNION ALL
  SELECT concat_ws(':', 'member', roleid::regrole, member::regrole, admin_option) FROM pg_auth_members
  UNION ALL
  SELECT concat_ws(':', 'database', datname, datdba::regrole, datacl, pg_encoding_to_char(encoding), datcollate,
                   datallowconn)
    FROM pg_database
  UNION ALL
  SELECT concat_ws(':', 'schema', nspname, nspowner::regrole, nspacl) FROM pg_namespace
  UNION ALL
  SELECT concat_ws(':', 'relation', c.oid::regclass, c.relkind, c.relowner::regrole, c.relacl)
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
   WHERE c.relkind IN ('r', 'v', 'm', 'S', 'f', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
     AND n.nspname NOT LIKE 'pg_toast%'
  UNION ALL
  SELECT concat_ws(':', 'default', defaclrole::regrole, defaclnamespace, defaclobjtype, defaclacl) FROM pg_default_acl
  UNION ALL
  SELECT concat_ws(':', 'extension', extname, extversion, extnamespace::regnamespace) FROM pg_extension
) AS catalog(item);
