#!/usr/bin/env bash
# Make a local PostgreSQL server available for the tests (installs it with apt when missing),
# with a database `icl_search_test` owned by a password user, and print its URL.
set -euo pipefail
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql) >/dev/null
    else
        echo "postgresql is not installed and apt-get is unavailable" >&2; exit 1
    fi
fi
VER=$(ls /usr/lib/postgresql | sort -V | tail -1)
if ! pg_lsclusters -h | grep -q "^$VER *main"; then
    pg_createcluster "$VER" main >/dev/null
fi
pg_lsclusters -h | awk -v v="$VER" '$1==v && $2=="main"' | grep -q online || pg_ctlcluster "$VER" main start
for _ in $(seq 1 30); do
    su postgres -c "psql -qAtc 'select 1'" >/dev/null 2>&1 && break; sleep 1
done
su postgres -c "psql -qAtc \"select 1 from pg_roles where rolname='icl'\"" | grep -q 1 \
  || su postgres -c "psql -qc \"create role icl login createdb password 'icl'\""
# the cold-start tests and the reliability probe make (and drop) databases of their own
su postgres -c "psql -qAtc \"select rolcreatedb from pg_roles where rolname='icl'\"" | grep -q t \
  || su postgres -c "psql -qc 'alter role icl createdb'"
su postgres -c "psql -qAtc \"select 1 from pg_database where datname='icl_search_test'\"" | grep -q 1 \
  || su postgres -c "psql -qc 'create database icl_search_test owner icl'"
echo "postgresql://icl:icl@127.0.0.1:5432/icl_search_test"
