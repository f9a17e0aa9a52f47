-- A read-only PostgreSQL role for ucgate on a XiVO host: it can read the columns of XiVO's users
-- that ucgate needs, and nothing else (no other column, no other table, no write).
--
--   sudo -u postgres psql asterisk -v password="'<a strong password>'" -f xivo-directory.sql
--
-- then, in the custom.env that ucgate reads (deploy/docker-compose.yml mounts
-- /etc/docker/compose/custom.env):
--
--   XIVO_DB_URL=postgresql://ucgate:<the same password>@localhost/asterisk
--
-- and in ucgate.toml: [users] database_url_env = "XIVO_DB_URL".

CREATE ROLE ucgate LOGIN PASSWORD :password;
GRANT CONNECT ON DATABASE asterisk TO ucgate;
GRANT USAGE ON SCHEMA public TO ucgate;
GRANT SELECT (id, loginclient, passwdclient, enableclient, cti_profile_id, firstname, lastname)
  ON userfeatures TO ucgate;
GRANT SELECT (id, name) ON cti_profile TO ucgate;
