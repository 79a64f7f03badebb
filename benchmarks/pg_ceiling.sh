#!/usr/bin/env bash
# The plain-SQL ceiling of a PostgreSQL job queue on this server.
#
# pgbench runs CLIENTS sessions; each repeats the two statements a queue worker
# sends per batch: a claim of BATCH jobs (SELECT ... FOR UPDATE SKIP LOCKED, the
# rows marked running with a lease, as a worker's claim does) and then the ack
# (DELETE of the claimed rows), each its own transaction, until ROWS queued jobs
# are gone. No job library is involved: what a library reaches on the same server
# is measured against this figure (benchmarks/README.md, "PostgreSQL suite").
#
#   bash benchmarks/pg_ceiling.sh                     # 200,000 jobs, 10 clients, batch 10
#   bash benchmarks/pg_ceiling.sh --rows 50000 --clients 4
#
# Everything happens in a schema of its own, bench_ceiling_<random>, created here
# and dropped on exit; nothing else in the database is touched.
set -euo pipefail

url="postgresql://127.0.0.1:5432/test"
rows=200000
clients=10
batch=10
threads=2

usage() {
  cat <<EOF
usage: bash benchmarks/pg_ceiling.sh [--url URL] [--rows N] [--clients N] [--batch N] [--threads N]
  --url URL      database, loopback only (default $url)
  --rows N       jobs queued before the run and drained by it (default $rows)
  --clients N    pgbench sessions, i.e. concurrent workers (default $clients)
  --batch N      jobs per claim (default $batch)
  --threads N    pgbench threads (default $threads)
EOF
}

while [ $# -gt 0 ]; do
  case "$1" in
    --url) url="$2"; shift 2 ;;
    --rows) rows="$2"; shift 2 ;;
    --clients) clients="$2"; shift 2 ;;
    --batch) batch="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "pg_ceiling: unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
done

for name in rows clients batch threads; do
  if ! [[ "${!name}" =~ ^[1-9][0-9]*$ ]]; then
    echo "pg_ceiling: --$name must be a positive integer, got '${!name}'" >&2
    exit 2
  fi
done
if [ "$threads" -gt "$clients" ]; then threads="$clients"; fi

# Loopback only: this sends a load to the server.
host=$(python3 -c 'import sys, urllib.parse as u; print(u.urlsplit(sys.argv[1]).hostname or "")' "$url")
case "$host" in
  127.*|localhost|::1) ;;
  *) echo "pg_ceiling: --url must point at this machine (loopback), got host '$host'" >&2; exit 2 ;;
esac

pgbench=$(command -v pgbench || ls /usr/lib/postgresql/*/bin/pgbench 2>/dev/null | sort -V | tail -n 1 || true)
if [ -z "$pgbench" ] || [ ! -x "$pgbench" ]; then
  echo "pg_ceiling: pgbench not found (it comes with the PostgreSQL server packages)" >&2
  exit 1
fi
psql=(psql "$url" -X -q -v ON_ERROR_STOP=1 -At)

schema="bench_ceiling_$(od -An -N4 -tx1 /dev/urandom | tr -d ' \n')"
workdir=$(mktemp -d)
cleanup() {
  "${psql[@]}" -c "DROP SCHEMA IF EXISTS $schema CASCADE" >/dev/null 2>&1 || true
  rm -rf "$workdir"
}
trap cleanup EXIT

# A queue table shaped like a job system's: the claim reads a partial index of
# queued jobs in (priority, run_at, id) order.
"${psql[@]}" <<SQL
CREATE SCHEMA $schema;
COMMENT ON SCHEMA $schema IS 'conveyor-bench:owner';
SET search_path = $schema;
CREATE TABLE jobs (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    queue text NOT NULL DEFAULT 'default',
    name text NOT NULL,
    payload jsonb NOT NULL,
    priority integer NOT NULL DEFAULT 0,
    run_at timestamptz NOT NULL DEFAULT now(),
    state text NOT NULL DEFAULT 'queued',
    attempts integer NOT NULL DEFAULT 0,
    lease_until timestamptz
);
INSERT INTO jobs (name, payload) SELECT 'noop', '0.0' FROM generate_series(1, $rows);
CREATE INDEX jobs_queued ON jobs (queue, priority, run_at, id) WHERE state = 'queued';
VACUUM ANALYZE jobs;
SQL

cat >"$workdir/claim_ack.sql" <<'SQL'
WITH picked AS (
    SELECT id FROM jobs
    WHERE queue = 'default' AND state = 'queued'
    ORDER BY priority, run_at, id
    LIMIT :batch
    FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE jobs SET state = 'running', attempts = attempts + 1,
                    lease_until = now() + interval '30 seconds'
    FROM picked WHERE jobs.id = picked.id
    RETURNING jobs.id
)
SELECT coalesce(array_agg(id), '{}') AS ids FROM claimed
\gset
DELETE FROM jobs WHERE id = ANY (':ids'::bigint[]);
SQL

# Enough rounds for every client to take its share; the last ones may find less.
per_client=$(( (rows + clients * batch - 1) / (clients * batch) ))
echo "pg_ceiling: $rows queued jobs, $clients clients, batches of $batch, schema $schema" >&2
PGOPTIONS="-c search_path=$schema" "$pgbench" -n -c "$clients" -j "$threads" \
  -t "$per_client" -D batch="$batch" -f "$workdir/claim_ack.sql" "$url" >"$workdir/pgbench.out" 2>&1 || {
  cat "$workdir/pgbench.out" >&2
  exit 1
}

tps=$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' "$workdir/pgbench.out" | head -n 1)
left=$("${psql[@]}" -c "SELECT count(*) FROM $schema.jobs")
version=$("${psql[@]}" -c "SHOW server_version")
settings=$("${psql[@]}" -c "SELECT 'autovacuum ' || current_setting('autovacuum') || ', synchronous_commit ' || current_setting('synchronous_commit') || ', fsync ' || current_setting('fsync')")
python3 - "$rows" "$left" "$tps" "$clients" "$per_client" "$batch" "$version" "$settings" <<'PY'
import sys

rows, left, tps, clients, per_client, batch = (float(x) for x in sys.argv[1:7])
version, settings = sys.argv[7], sys.argv[8]
rounds = clients * per_client  # pgbench transactions: one claim + one delete each
seconds = rounds / tps  # tps is over the run, without connection set-up
jobs = rows - left
print(f"PostgreSQL {version} ({settings}); {int(clients)} clients, batches of {int(batch)}")
print(f"{int(jobs):,} jobs claimed and deleted in {seconds:.2f} s "
      f"({rounds:,.0f} claim+delete rounds, {tps:,.0f} rounds/s)")
print(f"ceiling: {jobs / seconds:,.0f} jobs/s")
if left:
    print(f"warning: {int(left):,} jobs were left in the table", file=sys.stderr)
PY
