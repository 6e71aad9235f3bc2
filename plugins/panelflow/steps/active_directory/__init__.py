"""Active Directory: the directory sync threads (users, lock state, password-expiry notices, staff,
RDS, extended data and services), GroupActionWorkAD's job queue and upkeep, and
AutoAddUsersInSecurityGroupWork. ``_backend`` knows the directories and the loop over them; each
other module is one thread's work (see include/catalog/directory.yaml for which runs what)."""
