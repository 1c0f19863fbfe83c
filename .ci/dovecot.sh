#!/usr/bin/env bash
# A throwaway IMAP server for the tests: the machine's own Dovecot (installed
# with apt if missing), a fresh configuration in a temporary folder, on free
# loopback ports: plain IMAP (STARTTLS offered) and implicit-TLS IMAPS, with a
# certificate for localhost/127.0.0.1 signed by a throwaway CA.
#   start: prints "HOST PLAIN_PORT TLS_PORT CA_FILE DIR" for OUTREACH_TEST_IMAP
#   stop DIR: stops the server and removes its folder
# Users: one passwd-file per user, DIR/users/NAME, holding one line
#   NAME:{PLAIN}PASSWORD:UID:GID::DIR/mail/NAME::
# with UID/GID those of DIR/mail's owner. A file written while Dovecot runs is
# read at the user's first login. (One shared file would not do: Dovecot 2.3
# stats a passwd-file at most once per second, so a user appended within a
# second of another login would be unknown until the next second.)
# Write it to a temporary name in DIR/users and rename it into place.
set -euo pipefail

DOVECOT=/usr/sbin/dovecot

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

install() {
  echo "dovecot: installing the Debian package dovecot-imapd" >&2
  if [ "$(id -u)" -ne 0 ]; then
    echo "dovecot: not installed and not root: cannot install dovecot-imapd" >&2; return 1
  fi
  apt_install() { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dovecot-imapd >/dev/null; }
  (apt_install || { apt-get update -qq && apt_install; }) >&2
  [ -x "$DOVECOT" ]
}

# A CA made here and thrown away (its key is deleted once the server's
# certificate is signed), and the server's certificate for localhost and
# 127.0.0.1, with the extensions a strict verifier (Python 3.13) wants.
make_certs() {
  local dir=$1
  openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout "$dir/ca.key" -out "$dir/ca.pem" -days 2 -subj "/CN=outreach test IMAP CA" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout "$dir/server.key" -out "$dir/server.csr" -subj "/CN=localhost" 2>/dev/null
  cat > "$dir/server.ext" <<'EOF'
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
EOF
  openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" -CAcreateserial \
    -days 2 -extfile "$dir/server.ext" -out "$dir/server.pem" 2>/dev/null
  rm -f "$dir/ca.key" "$dir/ca.srl" "$dir/server.csr" "$dir/server.ext"
  chmod 600 "$dir/server.key"
}

write_config() {
  local dir=$1 plain=$2 tls=$3 mail_uid=$4 mail_gid=$5 login_user=$6 internal_user=$7
  local dh="" rootless=""
  if [ "$(id -u)" -ne 0 ]; then
    # Not root: no process can chroot.
    rootless="default_internal_group = $(id -gn)
service imap-login {
  chroot =
}
service anvil {
  chroot =
}
service imap-urlauth-login {
  chroot =
}"
  fi
  [ -r /usr/share/dovecot/dh.pem ] && dh="ssl_dh = </usr/share/dovecot/dh.pem"
  cat > "$dir/dovecot.conf" <<EOF
# Throwaway Dovecot for the outreach tests (.ci/dovecot.sh). Nothing outside $dir.
instance_name = outreach-imap-${dir##*.}
base_dir = $dir/run
state_dir = $dir/state
log_path = $dir/dovecot.log
protocols = imap
listen = 127.0.0.1
shutdown_clients = yes
default_login_user = $login_user
default_internal_user = $internal_user

ssl = yes
ssl_cert = <$dir/server.pem
ssl_key = <$dir/server.key
ssl_min_protocol = TLSv1.2
$dh

disable_plaintext_auth = no
auth_mechanisms = plain login
auth_verbose = yes
# Tests log in with wrong passwords on purpose: no 2 s delay on a failure
# (0.5 s remains), and no auth penalty: after a failure, Dovecot would hold every
# later login from 127.0.0.1 for 4 s and more. The penalty lives in anvil; with
# no anvil-auth-penalty socket (mode 0: not created) the auth process has none.
auth_failure_delay = 0
passdb {
  driver = passwd-file
  args = scheme=PLAIN $dir/users/%u
}
userdb {
  driver = passwd-file
  args = $dir/users/%u
}
first_valid_uid = $mail_uid
last_valid_uid = $mail_uid
first_valid_gid = $mail_gid
last_valid_gid = $mail_gid
mail_location = maildir:~/Maildir
namespace inbox {
  inbox = yes
  separator = /
}

service imap-login {
  inet_listener imap {
    address = 127.0.0.1
    port = $plain
  }
  inet_listener imaps {
    address = 127.0.0.1
    port = $tls
    ssl = yes
  }
}
service anvil {
  unix_listener anvil-auth-penalty {
    mode = 0
  }
}
$rootless
EOF
}

# Both listeners answer with an IMAP greeting.
wait_ready() {
  local dir=$1 plain=$2 tls=$3
  python3 - "$plain" "$tls" "$dir/ca.pem" <<'EOF'
import socket, ssl, sys, time
plain, tls, ca = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
deadline = time.monotonic() + 15
while True:
    try:
        with socket.create_connection(("127.0.0.1", plain), timeout=2) as s:
            assert s.recv(100).startswith(b"* OK")
        ctx = ssl.create_default_context(cafile=ca)
        with socket.create_connection(("127.0.0.1", tls), timeout=2) as raw:
            with ctx.wrap_socket(raw, server_hostname="localhost") as s:
                assert s.recv(100).startswith(b"* OK")
        sys.exit(0)
    except (OSError, AssertionError):
        if time.monotonic() > deadline:
            sys.exit(1)
        time.sleep(0.05)
EOF
}

start() {
  [ -x "$DOVECOT" ] || install || return 1
  local plain tls mail_uid mail_gid login_user internal_user
  dir=$(mktemp -d /tmp/outreach-imap.XXXXXX)
  # From here on, a failure leaves nothing behind (dir is global: the trap runs after start returns).
  trap 'status=$?; if [ $status -ne 0 ]; then [ -f "$dir/dovecot.log" ] && tail -n 20 "$dir/dovecot.log" >&2; stop "$dir"; fi' EXIT
  plain=$(free_port)
  tls=$(free_port)
  while [ "$tls" = "$plain" ]; do tls=$(free_port); done
  if [ "$(id -u)" -eq 0 ]; then
    # Dovecot refuses uid 0 for mail: the mail user owns the mailboxes.
    mail_uid=$(id -u mail); mail_gid=$(id -g mail)
    login_user=dovenull; internal_user=dovecot
  else
    # Rootless: every process runs as the caller, no chroot.
    mail_uid=$(id -u); mail_gid=$(id -g)
    login_user=$(id -un); internal_user=$(id -un)
  fi
  make_certs "$dir"
  mkdir -p "$dir/users" "$dir/mail" "$dir/state"
  # Dovecot's auth process (the internal user) reads DIR/users; imap (the mail user) writes DIR/mail.
  chmod 755 "$dir" "$dir/users"
  chown "$mail_uid:$mail_gid" "$dir/mail"
  write_config "$dir" "$plain" "$tls" "$mail_uid" "$mail_gid" "$login_user" "$internal_user"
  # Dovecot daemonizes and its children keep inherited descriptors: none of them may be a caller's pipe.
  if ! "$DOVECOT" -c "$dir/dovecot.conf" </dev/null >"$dir/startup.log" 2>&1; then
    echo "dovecot: failed to start:" >&2; cat "$dir/startup.log" >&2; return 1
  fi
  if ! wait_ready "$dir" "$plain" "$tls"; then
    echo "dovecot: not answering on 127.0.0.1:$plain and :$tls after 15 s" >&2; return 1
  fi
  echo "127.0.0.1 $plain $tls $dir/ca.pem $dir"
}

running() {
  local state
  state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
  [ -n "$state" ] && [ "$state" != Z ]
}

stop() {
  local dir=$1 pid i
  case "$dir" in /tmp/outreach-imap.*) ;; *) echo "dovecot: not a test server folder: $dir" >&2; return 1 ;; esac
  if [ -f "$dir/run/master.pid" ]; then
    pid=$(cat "$dir/run/master.pid")
    # Only our master: its command line names this folder's configuration.
    if [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF "$dir/dovecot.conf"; then
      kill -TERM "$pid" 2>/dev/null || true
      # About a second. Gone, or a zombie that its parent (init) has yet to reap.
      for i in $(seq 200); do
        running "$pid" || break
        sleep 0.05
      done
      running "$pid" && kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  rm -rf "$dir"
}

case "${1:-}" in
  start) start ;;
  stop) stop "$2" ;;
  *) echo "usage: $0 start | stop DIR" >&2; exit 2 ;;
esac
