#!/usr/bin/env bash
# test/e2e/lab.sh - the project's end-to-end lab: REAL Keystone 22 + Glance 25 (Debian bookworm
# packages, OpenStack Zed) on 127.0.0.1, with Glance sending its notifications to RabbitMQ.
#
#   lab.sh install        apt-get install the Debian packages (no daemon auto-start); ~0.1 s when done
#   lab.sh up             install if needed, start broker (only if none answers), keystone, glance,
#                         glance oracle; seed keystone; wait until healthy. Idempotent.
#   lab.sh down           stop only what `up` started (pid files in $LAB_DIR/run)
#   lab.sh status         one line per service; exit 0 only if all of them answer
#   lab.sh env            `export VAR=value` lines: eval "$(bash test/e2e/lab.sh env)"
#   lab.sh reset-images   delete every image of projects demo, attacker, other
#   lab.sh reset-limits   delete every project limit of projects demo, attacker, other
#   lab.sh smoke          self-test: create an image as demo, check list, oracle usage,
#                         registered limits (system scope) and the image.create notification
#
# Services (all on 127.0.0.1):
#   keystone  uwsgi + keystone-wsgi-public        :$KEYSTONE_PORT (5000)   sqlite, fernet
#   glance    glance-api, use_keystone_limits=False, notifications -> rabbit   :$GLANCE_PORT (9292)
#   oracle    glance-api, use_keystone_limits=True, notifications off, same db + store
#             -> its GET /v2/info/usage (project-scoped token) is Glance's own usage count
#                                                                             :$ORACLE_PORT (9293)
#   proxy     nginx (Debian's nginx-light) in front of glance, deploy/nginx/'s config: every
#             request is checked by the enforcer's admission endpoint on :$GATE_PORT
#             (10921: `gate`, or `consume` with ADMISSION_PORT=10921); while none answers
#             there, requests pass unchecked (fail open)                      :$PROXY_PORT (9294)
#   rabbitmq  the machine's broker on :$AMQP_PORT (5672, guest/guest); started with
#             `rabbitmq-server -detached` (and stopped by `down`) only when nothing answers there
#
# Environment: LAB_DIR (/tmp/gqe-lab), KEYSTONE_PORT, GLANCE_PORT, ORACLE_PORT, PROXY_PORT, GATE_PORT, AMQP_PORT,
#   LAB_TIMEOUT (120 s per service), FORCE_SEED=1 (re-run the idempotent keystone seeding).
set -euo pipefail

# Debian's python owns the OpenStack modules; a pyenv `python3` first in PATH must not win.
export PATH=/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin:/usr/local/bin:${PATH:-}
export PYTHONDONTWRITEBYTECODE=1
unset PYTHONPATH PYTHONHOME VIRTUAL_ENV
PY=/usr/bin/python3

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
HELPER=$HERE/lab/labctl.py

LAB_DIR=${LAB_DIR:-/tmp/gqe-lab}
KEYSTONE_PORT=${KEYSTONE_PORT:-5000}
GLANCE_PORT=${GLANCE_PORT:-9292}
ORACLE_PORT=${ORACLE_PORT:-9293}
PROXY_PORT=${PROXY_PORT:-9294}
GATE_PORT=${GATE_PORT:-10921}
AMQP_PORT=${AMQP_PORT:-5672}
LAB_TIMEOUT=${LAB_TIMEOUT:-120}

HOST=127.0.0.1
REGION=RegionOne
KEYSTONE_URL=http://$HOST:$KEYSTONE_PORT/v3
GLANCE_URL=http://$HOST:$GLANCE_PORT
ORACLE_URL=http://$HOST:$ORACLE_PORT
PROXY_URL=http://$HOST:$PROXY_PORT
TRANSPORT_URL=rabbit://guest:guest@$HOST:$AMQP_PORT/
AMQP_URL=amqp://guest:guest@$HOST:$AMQP_PORT/%2F

# Fixed credentials of a loopback-only lab.
ADMIN_PASSWORD=admin
GLANCE_PASSWORD=glance-pass
ENFORCER_PASSWORD=enforcer-pass
DEMO_PASSWORD=demo-pass
ATTACKER_PASSWORD=attacker-pass
OTHER_PASSWORD=other-pass
# Registered (default) limits of service glance in RegionOne (sizes in MiB).
LIMITS="image_count_total=100 image_size_total=1000 image_stage_total=1000 image_count_uploading=10"

RUN=$LAB_DIR/run
LOG=$LAB_DIR/log
ETC=$LAB_DIR/etc
DB=$LAB_DIR/db
KCONF=$ETC/keystone/keystone.conf
KUWSGI=$ETC/keystone/uwsgi.ini
GCONF=$ETC/glance/glance-api.conf
OCONF=$ETC/glance/glance-oracle.conf

PKGS=(keystone glance python3-openstackclient uwsgi-core uwsgi-plugin-python3 python3-oslo.limit
      python3-pika sqlite3 curl jq nginx-light)

log() { printf '[lab %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ------------------------------------------------------------------------------------ helpers
port_open() { timeout 2 bash -c "exec 3<>/dev/tcp/$HOST/$1" 2>/dev/null; }

alive() {   # alive PID: exists and is not a zombie (PID 1 on this VM reaps orphans slowly)
  local st
  st=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
  [ -n "$st" ] && [ "$st" != Z ] && [ "$st" != X ]
}

pidfile_alive() {   # pidfile_alive NAME PATTERN: $RUN/NAME.pid is a live process matching PATTERN
  local f=$RUN/$1.pid pid
  [ -s "$f" ] || return 1
  pid=$(<"$f")
  alive "$pid" || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$2"
}

close_fds() {   # in a subshell before exec: daemons must not hold the caller's pipes open
  local fd
  for fd in /proc/$BASHPID/fd/*; do
    fd=${fd##*/}; [ "$fd" -gt 2 ] 2>/dev/null && eval "exec $fd>&-"
  done
  return 0
}

spawn() {   # spawn NAME LOGFILE CMD...: detached (own session), no inherited fds, pid recorded
  local name=$1 logf=$2; shift 2
  ( close_fds; exec setsid "$@" </dev/null >>"$logf" 2>&1 ) &
  echo $! >"$RUN/$name.pid"
}

stop_pidfiles() {   # stop_pidfiles NAME:PATTERN...: TERM them all, wait up to 20 s, then KILL
  local spec name pat pid i pids=()
  for spec in "$@"; do
    name=${spec%%:*} pat=${spec#*:}
    [ -s "$RUN/$name.pid" ] || { rm -f "$RUN/$name.pid"; continue; }
    pid=$(<"$RUN/$name.pid")
    if pidfile_alive "$name" "$pat"; then
      log "stopping $name (pid $pid)"
      kill -TERM "$pid" 2>/dev/null || true
      pids+=("$pid")
    fi
    rm -f "$RUN/$name.pid"
  done
  for pid in "${pids[@]}"; do
    for i in $(seq 200); do alive "$pid" || break; sleep 0.1; done
    if alive "$pid"; then log "pid $pid still alive after 20 s: SIGKILL"; kill -KILL "$pid" 2>/dev/null || true; fi
  done
}
stop_pidfile() { stop_pidfiles "$1:$2"; }

now() { echo "${EPOCHREALTIME/,/.}"; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

wait_until() {   # wait_until WHAT CMD...
  local what=$1 t0=$SECONDS; shift
  until "$@" >/dev/null 2>&1; do
    [ $((SECONDS - t0)) -lt "$LAB_TIMEOUT" ] || die "timeout (${LAB_TIMEOUT}s) waiting for $what"
    sleep 0.25
  done
  log "$what ready ($((SECONDS - t0)) s)"
}

update_file() {   # update_file PATH < content: rewrite only if different; returns 1 if it changed
  local f=$1 tmp
  tmp=$(mktemp "$f.XXXX")
  cat >"$tmp"
  if cmp -s "$tmp" "$f"; then rm -f "$tmp"; return 0; fi
  mv -f "$tmp" "$f"; return 1
}

keystone_ok() { curl -fsS -m 5 "$KEYSTONE_URL" 2>/dev/null | grep -q '"id": *"v3'; }
glance_ok()   { curl -fsS -m 5 "$1/healthcheck" 2>/dev/null | grep -q OK; }

# ------------------------------------------------------------------------------------ install
pkgs_missing() {
  local p st out=()
  for p in "$@"; do
    st=$(dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null || true)
    [ "${st:0:2}" = ii ] || out+=("$p")
  done
  echo "${out[*]}"
}

dpkg_busy() {   # another apt/dpkg holds the lock (apt uses fcntl locks, not flock)
  "$PY" - <<'EOF'
import fcntl, sys
for path in ('/var/lib/dpkg/lock-frontend', '/var/lib/dpkg/lock'):
    try:
        with open(path, 'w') as f:
            fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except FileNotFoundError:
        pass
    except OSError:
        sys.exit(0)
sys.exit(1)
EOF
}

cmd_install() {
  local t0=$SECONDS want=("${PKGS[@]}") missing
  # a broker of our own is only needed (and installed) when none answers on the AMQP port
  port_open "$AMQP_PORT" || want+=(rabbitmq-server)
  missing=$(pkgs_missing "${want[@]}")
  if [ -z "$missing" ]; then log "packages already installed"; return 0; fi
  [ "$(id -u)" = 0 ] || die "install needs root (missing: $missing)"
  log "installing: $missing"

  # Do not let postinst scripts start daemons: policy-rc.d must answer 101 ("action forbidden").
  # If the present one already does (Docker-style), leave it alone; otherwise put ours in place
  # and restore the original on exit. Wait for a concurrent apt first, so we never swap its file.
  local pol=/usr/sbin/policy-rc.d saved=""
  local w=0
  while [ -x "$PY" ] && dpkg_busy; do
    [ $w = 0 ] && log "waiting for another apt/dpkg to finish"; w=$((w + 1))
    [ $w -lt 1200 ] || die "dpkg lock still held after 10 min"
    sleep 0.5
  done
  local rc=0; [ -x "$pol" ] && { "$pol" keystone start >/dev/null 2>&1 || rc=$?; }
  if [ "$rc" != 101 ]; then
    if [ -e "$pol" ]; then saved=$(mktemp /tmp/policy-rc.d.gqe-lab.XXXX); cp -p "$pol" "$saved"; fi
    printf '#!/bin/sh\n# gqe-lab: no service start during package install\nexit 101\n' >"$pol"
    chmod 755 "$pol"
    POLICY_RESTORE="if [ -n '$saved' ]; then mv -f '$saved' '$pol'; else rm -f '$pol'; fi"
    trap 'eval "$POLICY_RESTORE"' EXIT          # also on failure / Ctrl-C
  fi

  export DEBIAN_FRONTEND=noninteractive
  # no package may configure a DB (dbconfig-common), bootstrap keystone or register endpoints
  debconf-set-selections <<'EOF'
keystone keystone/configure_db boolean false
keystone keystone/dbconfig-install boolean false
keystone keystone/create-admin-tenant boolean false
keystone keystone/register-endpoint boolean false
glance-common glance/configure_db boolean false
glance-common glance-common/dbconfig-install boolean false
glance-common glance/configure_rabbit boolean false
glance-common glance/configure_ksat boolean false
glance-api glance/configure_api-endpoint boolean false
EOF
  local apt=(apt-get -y -q -o DPkg::Lock::Timeout=600 --no-install-recommends
             -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)
  # shellcheck disable=SC2086
  if ! apt-cache show $missing >/dev/null 2>&1; then
    log "apt-get update (package lists missing or stale)"
    apt-get -q -o DPkg::Lock::Timeout=600 update >/dev/null
  fi
  # shellcheck disable=SC2086
  if ! "${apt[@]}" install $missing; then
    log "install failed: apt-get update and retry"
    apt-get -q -o DPkg::Lock::Timeout=600 update >/dev/null
    # shellcheck disable=SC2086
    "${apt[@]}" install $missing
  fi
  if [ -n "${POLICY_RESTORE:-}" ]; then eval "$POLICY_RESTORE"; POLICY_RESTORE=""; trap - EXIT; fi
  missing=$(pkgs_missing "${want[@]}")
  [ -z "$missing" ] || die "still missing after install: $missing"
  log "install done in $((SECONDS - t0)) s"
}

# ------------------------------------------------------------------------------------ rabbitmq
# The machine's broker (127.0.0.1:5672, guest/guest) is used as it is. Only if nothing answers
# do we start one with the machine's own command, and remember that it is ours.
start_broker() {
  if [ -e "$RUN/rabbitmq.owned" ]; then
    if pidfile_alive rabbitmq beam && port_open "$AMQP_PORT"; then return 0; fi
    rm -f "$RUN/rabbitmq.owned" "$RUN/rabbitmq.pid" "$RUN/epmd.owned"   # stale (reboot, crash)
  fi
  if port_open "$AMQP_PORT"; then log "broker answers on $HOST:$AMQP_PORT: using it"; return 0; fi
  command -v rabbitmq-server >/dev/null || die "nothing answers on $AMQP_PORT and rabbitmq-server is not installed"
  log "nothing answers on $HOST:$AMQP_PORT: rabbitmq-server -detached"
  port_open 4369 || touch "$RUN/epmd.owned"       # epmd is started by rabbitmq-server if missing
  touch "$RUN/rabbitmq.owned"
  ( close_fds; cd /; exec rabbitmq-server -detached ) >>"$LOG/rabbitmq-start.log" 2>&1 </dev/null \
    || die "rabbitmq-server -detached failed, see $LOG/rabbitmq-start.log"
  # a node that fails to boot logs to /var/log/rabbitmq/ (the machine's RABBITMQ_LOG_BASE)
  wait_until "rabbitmq on $HOST:$AMQP_PORT" port_open "$AMQP_PORT"
  local pid
  pid=$(ss -Hltnp "sport = :$AMQP_PORT" 2>/dev/null | grep -o 'beam[^,]*,pid=[0-9]*' | head -1 | grep -o '[0-9]*$' || true)
  [ -n "$pid" ] || die "cannot find the pid of the broker listening on $AMQP_PORT"
  echo "$pid" >"$RUN/rabbitmq.pid"
}

stop_broker() {
  [ -e "$RUN/rabbitmq.owned" ] || return 0
  if pidfile_alive rabbitmq beam; then
    log "stopping the rabbitmq we started (pid $(<"$RUN/rabbitmq.pid"))"
    timeout 60 rabbitmqctl stop >>"$LOG/rabbitmq-start.log" 2>&1 || true
    local i pid; pid=$(<"$RUN/rabbitmq.pid")
    for i in $(seq 100); do alive "$pid" || break; sleep 0.1; done
  fi
  stop_pidfile rabbitmq beam
  if [ -e "$RUN/epmd.owned" ]; then
    epmd -kill >/dev/null 2>&1 || true    # refuses while any Erlang node is still registered
    rm -f "$RUN/epmd.owned"
  fi
  rm -f "$RUN/rabbitmq.owned"
}

# ------------------------------------------------------------------------------------ keystone
kmanage() { keystone-manage --config-file "$KCONF" --log-file "$LOG/keystone-manage.log" "$@" 2>>"$LOG/keystone-manage.log"; }

keystone_conf() {
  cat <<EOF
# generated by test/e2e/lab.sh
[DEFAULT]
log_file = $LOG/keystone.log
[database]
connection = sqlite:///$DB/keystone.sqlite
[token]
provider = fernet
expiration = 14400
[fernet_tokens]
key_repository = $ETC/keystone/fernet-keys/
[fernet_receipts]
key_repository = $ETC/keystone/fernet-keys/
[credential]
key_repository = $ETC/keystone/credential-keys/
[cache]
# without it every token validation costs ~90 sqlite queries (0.4-0.7 s per call).
# The memory cache is per process: keep ONE uwsgi process.
enabled = true
backend = dogpile.cache.memory
[identity]
# bcrypt's default 12 rounds cost ~0.3-0.6 s per password check, i.e. per token request here
password_hash_rounds = 4
[oslo_messaging_notifications]
driver = noop
[unified_limit]
enforcement_model = flat
EOF
}

keystone_uwsgi_ini() {
  cat <<EOF
[uwsgi]
plugins = python3
http-socket = $HOST:$KEYSTONE_PORT
wsgi-file = /usr/bin/keystone-wsgi-public
env = OS_KEYSTONE_CONFIG_DIR=$ETC/keystone
master = true
processes = 1
# keystone + sqlite (oslo.db NullPool) breaks with more than one thread per process
threads = 1
enable-threads = true
lazy-apps = true
die-on-term = true
buffer-size = 65535
# http-socket has no keep-alive: clients that reuse the socket get ECONNRESET without this
add-header = Connection: close
listen = 100
chdir = $LAB_DIR
EOF
}

write_keystone_conf() {   # returns 1 if something changed
  local changed=0
  mkdir -p "$ETC/keystone"
  keystone_conf | update_file "$KCONF" || changed=1
  keystone_uwsgi_ini | update_file "$KUWSGI" || changed=1
  return $changed
}

keystone_db() {   # schema, WAL, fernet + credential keys
  if [ ! -e "$DB/keystone.synced" ]; then
    log "keystone-manage db_sync"
    kmanage db_sync || die "keystone db_sync failed, see $LOG/keystone-manage.log"
    sqlite3 "$DB/keystone.sqlite" 'PRAGMA journal_mode=WAL;' >/dev/null   # persistent in the file
    touch "$DB/keystone.synced"
  fi
  # What `keystone-manage fernet_setup` / `credential_setup` leave behind: key 0 (staged) and
  # key 1 (primary), each Fernet.generate_key() = urlsafe base64 of 32 random bytes. Written
  # here directly: each keystone-manage run costs ~3.5 s of imports on this machine.
  local repo n
  for repo in fernet-keys credential-keys; do
    [ -e "$ETC/keystone/$repo/1" ] && continue
    mkdir -p "$ETC/keystone/$repo"; chmod 700 "$ETC/keystone/$repo"
    for n in 0 1; do
      (umask 077; head -c 32 /dev/urandom | base64 -w0 | tr '+/' '-_' >"$ETC/keystone/$repo/$n")
    done
  done
}

keystone_bootstrap() {   # admin user/project/roles, region, identity service + endpoints
  if [ ! -e "$DB/keystone.bootstrapped" ]; then
    log "keystone-manage bootstrap"
    kmanage bootstrap --bootstrap-password "$ADMIN_PASSWORD" --bootstrap-username admin \
      --bootstrap-project-name admin --bootstrap-role-name admin --bootstrap-service-name keystone \
      --bootstrap-region-id "$REGION" --bootstrap-admin-url "$KEYSTONE_URL" \
      --bootstrap-internal-url "$KEYSTONE_URL" --bootstrap-public-url "$KEYSTONE_URL" \
      || die "keystone bootstrap failed, see $LOG/keystone-manage.log"
    touch "$DB/keystone.bootstrapped"
  fi
}

start_keystone() {   # $1 = 1 if its config changed
  if pidfile_alive keystone uwsgi; then
    [ "$1" = 1 ] || return 0
    log "keystone config changed: restart"; stop_pidfile keystone uwsgi
  fi
  port_open "$KEYSTONE_PORT" && die "port $KEYSTONE_PORT is in use by something that is not this lab"
  log "starting keystone on :$KEYSTONE_PORT"
  spawn keystone "$LOG/keystone-uwsgi.log" /usr/bin/uwsgi --ini "$KUWSGI"
}

seed_hash() {
  { sha256sum "$HELPER"; echo "$KEYSTONE_URL $GLANCE_URL $REGION $LIMITS"
    echo "$ADMIN_PASSWORD $GLANCE_PASSWORD $ENFORCER_PASSWORD $DEMO_PASSWORD $ATTACKER_PASSWORD $OTHER_PASSWORD"; } \
    | sha256sum | cut -c1-16
}
seeded() {   # keystone already holds exactly what seed_keystone would write
  [ -s "$LAB_DIR/ids.env" ] && [ "$(cat "$LAB_DIR/seed.hash" 2>/dev/null)" = "$(seed_hash)" ] \
    && [ "${FORCE_SEED:-0}" != 1 ]
}
seed_keystone() {
  seeded && return 0
  log "seeding keystone (projects, users, roles, glance service + endpoints, registered limits)"
  helper_env "$PY" "$HELPER" seed || die "keystone seeding failed"
  seed_hash >"$LAB_DIR/seed.hash"
}

# ------------------------------------------------------------------------------------ glance
glance_db_sync() {
  [ -e "$DB/glance.synced" ] && return 0
  mkdir -p "$ETC/glance"
  # db_sync only needs [database]; it runs while keystone is being set up
  printf '[DEFAULT]\nlog_file = %s\n[database]\nconnection = sqlite:///%s\n' \
    "$LOG/glance-manage.log" "$DB/glance.sqlite" >"$ETC/glance/glance-manage.conf"
  glance-manage --config-file "$ETC/glance/glance-manage.conf" db_sync >>"$LOG/glance-manage.log" 2>&1 \
    || { log "glance-manage db_sync failed, see $LOG/glance-manage.log"; return 1; }
  sqlite3 "$DB/glance.sqlite" 'PRAGMA journal_mode=WAL;' >/dev/null
  touch "$DB/glance.synced"
}

glance_conf() {   # glance_conf PORT USE_KEYSTONE_LIMITS NOTIFY_DRIVER LOGNAME
  cat <<EOF
# generated by test/e2e/lab.sh
[DEFAULT]
bind_host = $HOST
bind_port = $1
workers = 1
log_file = $LOG/$4.log
transport_url = $TRANSPORT_URL
enabled_backends = file:file
enabled_import_methods = [glance-direct,web-download,copy-image]
use_keystone_limits = $2
[database]
connection = sqlite:///$DB/glance.sqlite
[glance_store]
default_backend = file
[file]
filesystem_store_datadir = $LAB_DIR/images/
[os_glance_staging_store]
filesystem_store_datadir = $LAB_DIR/staging/
[os_glance_tasks_store]
filesystem_store_datadir = $LAB_DIR/tasks/
[keystone_authtoken]
www_authenticate_uri = http://$HOST:$KEYSTONE_PORT
auth_url = http://$HOST:$KEYSTONE_PORT
auth_type = password
project_domain_name = Default
user_domain_name = Default
project_name = service
username = glance
password = $GLANCE_PASSWORD
region_name = $REGION
[paste_deploy]
flavor = keystone
config_file = /etc/glance/glance-api-paste.ini
[oslo_messaging_notifications]
driver = $3
transport_url = $TRANSPORT_URL
[oslo_concurrency]
lock_path = $LAB_DIR/lock
EOF
  # only the oracle enforces unified limits; the main API starts before keystone is seeded
  [ "$2" = True ] || return 0
  cat <<EOF
[oslo_limit]
auth_url = http://$HOST:$KEYSTONE_PORT
auth_type = password
user_domain_id = default
username = glance
password = $GLANCE_PASSWORD
system_scope = all
endpoint_id = $(sed -n 's/^LAB_GLANCE_ENDPOINT_ID=//p' "$LAB_DIR/ids.env")
region_name = $REGION
EOF
}

start_glance() {   # start_glance NAME PORT CONF USE_KEYSTONE_LIMITS DRIVER; prints nothing
  local name=$1 port=$2 conf=$3 changed=0 i
  mkdir -p "$LAB_DIR/images" "$LAB_DIR/staging" "$LAB_DIR/tasks" "$LAB_DIR/lock"
  glance_conf "$port" "$4" "$5" "$name" | update_file "$conf" || changed=1
  if pidfile_alive "$name" glance-api; then
    [ $changed = 1 ] || return 0
    log "$name config changed: restart"; stop_pidfile "$name" glance-api
    for i in $(seq 40); do port_open "$port" || break; sleep 0.25; done
  fi
  port_open "$port" && die "port $port is in use by something that is not this lab"
  log "starting $name on :$port (use_keystone_limits=$4, notifications=$5)"
  spawn "$name" "$LOG/$name.stdout.log" /usr/bin/glance-api --config-file "$conf"
}

# ------------------------------------------------------------------------------------ proxy
NGINX_SHIPPED=$HERE/../../deploy/nginx/glance-api-admission.conf

proxy_conf() {   # the shipped config with the lab's three addresses (its ADAPT lines)
  sed -e "s|server 127.0.0.1:9292;|server $HOST:$GLANCE_PORT;|" \
      -e "s|server 127.0.0.1:10921;|server $HOST:$GATE_PORT;|" \
      -e "s|listen 127.0.0.1:9294;|listen $HOST:$PROXY_PORT;|" "$NGINX_SHIPPED"
}

proxy_main_conf() {
  cat <<EOF
daemon off;
pid $RUN/glance-proxy.nginx.pid;
error_log $LOG/glance-proxy.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $LAB_DIR/nginx/body;
  proxy_temp_path $LAB_DIR/nginx/proxy;
  include $ETC/nginx/glance-api-admission.conf;
}
EOF
}

proxy_ok() { curl -s -o /dev/null -m 5 "$PROXY_URL/healthcheck"; }

start_proxy() {   # nginx in front of glance; restarted when its config changed
  local changed=0 i
  command -v nginx >/dev/null || die "nginx is not installed (nginx-light): run lab.sh install"
  mkdir -p "$ETC/nginx" "$LAB_DIR/nginx"
  chmod 777 "$LAB_DIR/nginx"   # the workers (www-data) write their temp files there
  proxy_conf | update_file "$ETC/nginx/glance-api-admission.conf" || changed=1
  proxy_main_conf | update_file "$ETC/nginx/nginx.conf" || changed=1
  if pidfile_alive glance-proxy nginx; then
    [ $changed = 1 ] || return 0
    log "glance-proxy config changed: restart"; stop_pidfile glance-proxy nginx
    for i in $(seq 40); do port_open "$PROXY_PORT" || break; sleep 0.25; done
  fi
  port_open "$PROXY_PORT" && die "port $PROXY_PORT is in use by something that is not this lab"
  nginx -t -q -c "$ETC/nginx/nginx.conf" -p "$LAB_DIR/nginx/" || die "nginx refused $ETC/nginx/nginx.conf"
  log "starting glance-proxy (nginx) on :$PROXY_PORT, admission endpoint :$GATE_PORT"
  spawn glance-proxy "$LOG/glance-proxy.stdout.log" nginx -c "$ETC/nginx/nginx.conf" -p "$LAB_DIR/nginx/"
  wait_until "glance proxy $PROXY_URL" proxy_ok
}

# ------------------------------------------------------------------------------------ commands
all_running() {
  pidfile_alive keystone uwsgi && pidfile_alive glance-api glance-api && pidfile_alive glance-oracle glance-api
}

config_unchanged() {   # would `up` write exactly the same configs?
  [ -s "$LAB_DIR/ids.env" ] || return 1
  keystone_conf | cmp -s - "$KCONF" && keystone_uwsgi_ini | cmp -s - "$KUWSGI" \
    && glance_conf "$GLANCE_PORT" False messagingv2 glance-api | cmp -s - "$GCONF" \
    && glance_conf "$ORACLE_PORT" True noop glance-oracle | cmp -s - "$OCONF"
}

cmd_up() {
  local t0; t0=$(now)
  mkdir -p "$RUN" "$LOG" "$ETC" "$DB"
  if all_running && config_unchanged && port_open "$AMQP_PORT" && keystone_ok \
     && glance_ok "$GLANCE_URL" && glance_ok "$ORACLE_URL"; then
    # the proxy came later than the rest: a lab up without it gets it, and nothing else changes
    cmd_install; start_proxy
    log "lab already up (LAB_DIR=$LAB_DIR)"; return 0
  fi
  cmd_install
  command -v keystone-manage >/dev/null && command -v glance-api >/dev/null || die "packages missing"

  # broker and glance (db_sync + API, which needs neither keystone nor the broker to boot) come
  # up in the background while keystone is set up: ~8 s less on 2 cores
  start_broker & local broker_job=$!
  { glance_db_sync && start_glance glance-api "$GLANCE_PORT" "$GCONF" False messagingv2; } &
  local glance_job=$!
  local kchanged=0 oracle=0
  write_keystone_conf || kchanged=1
  keystone_db
  start_keystone $kchanged         # boots while bootstrap writes (sqlite WAL)
  # the oracle's config needs the glance endpoint id: start it now if keystone is seeded already
  if seeded; then start_glance glance-oracle "$ORACLE_PORT" "$OCONF" True noop; oracle=1; fi
  keystone_bootstrap
  wait_until "keystone $KEYSTONE_URL" keystone_ok
  seed_keystone
  [ $oracle = 1 ] || start_glance glance-oracle "$ORACLE_PORT" "$OCONF" True noop
  wait "$glance_job" || die "glance-api did not start, see $LOG/glance-manage.log and $LOG/glance-api*.log"
  wait "$broker_job" || die "broker not available, see $LOG/rabbitmq-start.log"
  wait_until "glance $GLANCE_URL" glance_ok "$GLANCE_URL"
  wait_until "glance oracle $ORACLE_URL" glance_ok "$ORACLE_URL"
  start_proxy
  log "lab up in $(since "$t0") s (LAB_DIR=$LAB_DIR)"
}

cmd_down() {
  local t0; t0=$(now)
  [ -d "$RUN" ] || { log "nothing to stop (no $RUN)"; return 0; }
  stop_pidfiles glance-proxy:nginx glance-oracle:glance-api glance-api:glance-api keystone:uwsgi
  stop_broker
  log "lab down in $(since "$t0") s"
}

cmd_status() {
  local rc=0
  _line() {   # _line NAME PIDNAME PATTERN URL CHECK...
    local name=$1 pidname=$2 pat=$3 url=$4 pid=""; shift 4
    pidfile_alive "$pidname" "$pat" && pid=" pid $(<"$RUN/$pidname.pid")"
    if "$@"; then printf '%-9s up    %s%s\n' "$name" "$url" "$pid"
    else printf '%-9s DOWN  %s%s\n' "$name" "$url" "$pid"; rc=1; fi
  }
  _line keystone keystone uwsgi "$KEYSTONE_URL" keystone_ok
  _line glance glance-api glance-api "$GLANCE_URL" glance_ok "$GLANCE_URL"
  _line oracle glance-oracle glance-api "$ORACLE_URL" glance_ok "$ORACLE_URL"
  _line proxy glance-proxy nginx "$PROXY_URL -> admission :$GATE_PORT" proxy_ok
  local owner=machine; [ -e "$RUN/rabbitmq.owned" ] && owner="started by lab"
  _line rabbitmq rabbitmq beam "amqp://$HOST:$AMQP_PORT ($owner)" port_open "$AMQP_PORT"
  return $rc
}

emit() { printf 'export %s=%q\n' "$1" "$2"; }

cmd_env() {
  [ -s "$LAB_DIR/ids.env" ] || die "no $LAB_DIR/ids.env: run 'lab.sh up' first"
  emit OS_AUTH_URL "$KEYSTONE_URL"
  emit OS_IDENTITY_API_VERSION 3
  emit OS_USERNAME enforcer
  emit OS_PASSWORD "$ENFORCER_PASSWORD"
  emit OS_PROJECT_NAME service
  emit OS_USER_DOMAIN_NAME Default
  emit OS_PROJECT_DOMAIN_NAME Default
  emit OS_REGION_NAME "$REGION"
  emit OS_INTERFACE public
  # The enforcer's whole environment, so its commands work in the shell that evals this: the
  # system scope reads unified limits, TRANSPORT_URL is Glance's own broker.
  emit OS_SYSTEM_SCOPE all
  emit TRANSPORT_URL "$TRANSPORT_URL"
  emit LAB_DIR "$LAB_DIR"
  emit LAB_REGION "$REGION"
  emit LAB_KEYSTONE_URL "$KEYSTONE_URL"
  emit LAB_GLANCE_URL "$GLANCE_URL"
  emit LAB_GLANCE_ORACLE_URL "$ORACLE_URL"
  emit LAB_GLANCE_PROXY_URL "$PROXY_URL"
  emit LAB_GATE_PORT "$GATE_PORT"
  emit LAB_GLANCE_UNIFIED_LIMITS 0
  emit LAB_TRANSPORT_URL "$TRANSPORT_URL"
  emit LAB_AMQP_URL "$AMQP_URL"
  emit LAB_GLANCE_EXCHANGE glance
  emit LAB_GLANCE_NOTIFICATION_TOPIC notifications
  emit LAB_USER_DOMAIN_NAME Default
  emit LAB_PROJECT_DOMAIN_NAME Default
  emit LAB_ADMIN_USERNAME admin
  emit LAB_ADMIN_PASSWORD "$ADMIN_PASSWORD"
  emit LAB_ADMIN_PROJECT_NAME admin
  emit LAB_GLANCE_SERVICE_USERNAME glance
  emit LAB_GLANCE_SERVICE_PASSWORD "$GLANCE_PASSWORD"
  emit LAB_ENFORCER_USERNAME enforcer
  emit LAB_ENFORCER_PASSWORD "$ENFORCER_PASSWORD"
  emit LAB_ENFORCER_PROJECT_NAME service
  emit LAB_ENFORCER_SYSTEM_SCOPE all
  emit LAB_DEMO_USERNAME demo
  emit LAB_DEMO_PASSWORD "$DEMO_PASSWORD"
  emit LAB_DEMO_PROJECT_NAME demo
  emit LAB_ATTACKER_USERNAME attacker
  emit LAB_ATTACKER_PASSWORD "$ATTACKER_PASSWORD"
  emit LAB_ATTACKER_PROJECT_NAME attacker
  emit LAB_OTHER_USERNAME other
  emit LAB_OTHER_PASSWORD "$OTHER_PASSWORD"
  emit LAB_OTHER_PROJECT_NAME other
  local k v
  while IFS='=' read -r k v; do [ -n "$k" ] && emit "$k" "$v"; done <"$LAB_DIR/ids.env"
}

helper_env() {   # run a command with the lab's variables (what `env` prints) in its environment
  ( export KEYSTONE_URL GLANCE_URL ORACLE_URL AMQP_URL REGION LIMITS LAB_DIR ADMIN_PASSWORD \
      GLANCE_PASSWORD ENFORCER_PASSWORD DEMO_PASSWORD ATTACKER_PASSWORD OTHER_PASSWORD
    if [ -s "$LAB_DIR/ids.env" ]; then eval "$(cmd_env)"; fi
    "$@" )
}

require_up() { cmd_status >/dev/null || die "lab is not up: run 'lab.sh up' first"; }

lab_lock() {   # serialize concurrent up/down on the same LAB_DIR (daemons do not inherit fd 9)
  mkdir -p "$LAB_DIR"
  exec 9>"$LAB_DIR/.lock"
  flock -w "$LAB_TIMEOUT" 9 || die "another lab.sh up/down holds $LAB_DIR/.lock"
}

case "${1:-}" in
  install) cmd_install ;;
  up) lab_lock; cmd_up ;;
  down) [ -d "$LAB_DIR" ] && lab_lock; cmd_down ;;
  status) cmd_status ;;
  env) cmd_env ;;
  reset-images) require_up; helper_env "$PY" "$HELPER" reset-images ;;
  reset-limits) require_up; helper_env "$PY" "$HELPER" reset-limits ;;
  smoke) require_up; helper_env "$PY" "$HELPER" smoke ;;
  *) sed -n '2,/^set -euo/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
