#!/usr/bin/env bash
# TLS certificates for a SuperLink and key pairs for SuperNode authentication.
#
#   bash recipes/flower/generate_credentials.sh OUT_DIR NUM_SUPERNODES [SUPERLINK_HOST]
#
# OUT_DIR/certificates/{ca.crt,ca.key,server.pem,server.key}: a CA and a SuperLink certificate
#   valid for 127.0.0.1, localhost and SUPERLINK_HOST (a name or an IP address).
# OUT_DIR/keys/supernode_<i>{,.pub}: an EC P-384 key pair per SuperNode (OpenSSH format).
# Fine for trials; in production use your organisation's CA and key handling.
set -euo pipefail
out=${1:?output folder}; nodes=${2:?number of SuperNodes}; host=${3:-localhost}
mkdir -p "$out/certificates" "$out/keys"
cd "$out/certificates"
openssl req -x509 -newkey rsa:4096 -nodes -days 365 -subj "/CN=fedhubert trial CA" -keyout ca.key -out ca.crt 2>/dev/null
if [[ $host =~ ^[0-9.]+$ ]]; then san="IP:127.0.0.1,DNS:localhost,IP:$host"; else san="IP:127.0.0.1,DNS:localhost,DNS:$host"; fi
openssl req -newkey rsa:4096 -nodes -subj "/CN=$host" -keyout server.key -out server.csr 2>/dev/null
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 365 \
    -extfile <(printf 'subjectAltName=%s\n' "$san") -out server.pem 2>/dev/null
rm -f server.csr ca.srl
cd ../keys
for i in $(seq 1 "$nodes"); do
    rm -f "supernode_$i" "supernode_$i.pub"
    ssh-keygen -q -t ecdsa -b 384 -N "" -C "supernode_$i" -f "supernode_$i"
done
echo "certificates in $out/certificates, SuperNode keys in $out/keys"
