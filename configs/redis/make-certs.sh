#!/bin/sh
# Certificates for Redis over TLS on a home LAN (docs/security.md): a private CA, and a server
# certificate for the Redis box, valid for the names and addresses given.
#   sh make-certs.sh DIR IP-OR-NAME [MORE ...]     e.g. sh make-certs.sh /etc/redis/tls 192.168.1.10 redis.lan
# Copy DIR/ca.pem to every PC (ssl_ca_certs=...); server.pem and server.key stay on the Redis box.
set -eu
dir=$1; shift
[ $# -gt 0 ] || { echo "usage: make-certs.sh DIR IP-OR-NAME [MORE ...]" >&2; exit 2; }
mkdir -p "$dir"; cd "$dir"
san=""
for name in "$@"; do
  case $name in *[!0-9.:]*) kind=DNS ;; *) kind=IP ;; esac
  san="${san:+$san,}$kind:$name"
done
umask 077
openssl req -x509 -newkey rsa:3072 -nodes -keyout ca.key -out ca.pem -days 3650 -subj "/CN=seedfarm redis CA" 2>/dev/null
openssl req -newkey rsa:3072 -nodes -keyout server.key -out server.csr -subj "/CN=$1" 2>/dev/null
printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\n' "$san" > server.ext
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 825 -extfile server.ext 2>/dev/null
rm -f server.csr server.ext ca.srl
chmod 644 ca.pem server.pem
echo "$dir: ca.pem (to every PC), server.pem + server.key (Redis box only), ca.key (keep offline)"
