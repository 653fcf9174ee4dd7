"""The backup runner of the Ansible role `backups`, one module per concern.

backup.py (beside this package in /usr/local/lib/<name>/) is the command the
systemd units and /usr/local/sbin/<name> run; it calls cli.main.

  cli        the command line: run | verify | restore | list | status | alert, the lock
  dump       `run`: a set (dump in the snapshot, checksum, verify, encrypt,
             globals, manifest), then off-site copies, retention, status record
  verify     test restore and row counts of a dump; `verify` of a stored set
  retention  which stored sets a good run deletes (backups_lib.retention_prune)
  restore    `restore`: the safety rules, safety backup, staging database, swap
  offsite    rsync over SSH and rclone copies of a new set
  status     status.json, the success check-in, `status`, `list` and `alert`
  store      the backup directory: sets, manifests, checksum files, fsync
  postgres   the server: SQL over the unix socket and pg_dump/pg_dumpall/pg_restore
  common     BackupError, the log line, UTC times, checked commands, scratch names

backups_lib (the role's filter_plugins/backups.py, shipped beside backup.py)
holds set names, tags and the retention policy. Only postgres touches the
server: the unit tests (tests/unit/test_backup_runner.py) put a fake in its
place.
"""
