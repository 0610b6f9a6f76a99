#!/bin/sh
# Start SeaweedFS (weed mini: master, volume, filer and S3 gateway in one process) for the dev object store.
# Its only S3 identity is ACCESS_KEY / SECRET_KEY (from the Secret mlpipeline-minio-artifact); the identity file is
# written to a memory-backed folder readable by this user only, and the keys are never printed.
# Then the buckets in BUCKETS are created (once; existing ones are kept). Extra arguments go to weed mini.
set -eu
: "${ACCESS_KEY:?ACCESS_KEY is not set (Secret mlpipeline-minio-artifact, key accesskey)}"
: "${SECRET_KEY:?SECRET_KEY is not set (Secret mlpipeline-minio-artifact, key secretkey)}"
DATA_DIR="${DATA_DIR:-/data}"
CONFIG_DIR="${CONFIG_DIR:-/run/seaweedfs}"
S3_PORT="${S3_PORT:-8333}"
MASTER_PORT="${MASTER_PORT:-9333}"
BUCKETS="${BUCKETS:-mlpipeline animegen}"

case "$ACCESS_KEY$SECRET_KEY" in
  *REPLACE_WITH*) echo "object-store.env still holds the placeholders of object-store.env.example: set a real key pair" >&2; exit 1 ;;
  *[!A-Za-z0-9_+/=.-]*) echo "accesskey/secretkey may hold only letters, digits and _ + / = . -" >&2; exit 1 ;;
esac
umask 077
mkdir -p "$CONFIG_DIR" "$DATA_DIR"
printf '{"identities": [{"name": "kfp", "credentials": [{"accessKey": "%s", "secretKey": "%s"}], "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]}\n' \
  "$ACCESS_KEY" "$SECRET_KEY" > "$CONFIG_DIR/s3.json"
unset ACCESS_KEY SECRET_KEY

(
  # wait for the master, then create the missing buckets
  until echo "s3.bucket.list" | timeout 20 weed shell -master="127.0.0.1:$MASTER_PORT" > "$CONFIG_DIR/buckets" 2>/dev/null; do
    sleep 2
  done
  for bucket in $BUCKETS; do
    if ! grep -q "^  $bucket[[:space:]]" "$CONFIG_DIR/buckets"; then
      echo "s3.bucket.create -name $bucket" | timeout 20 weed shell -master="127.0.0.1:$MASTER_PORT" > /dev/null 2>&1 \
        && echo "created bucket $bucket" || echo "could not create bucket $bucket" >&2
    fi
  done
) &

exec weed mini -dir="$DATA_DIR" -ip=127.0.0.1 -ip.bind=0.0.0.0 -master.port="$MASTER_PORT" -s3.port="$S3_PORT" \
  -s3.config="$CONFIG_DIR/s3.json" -s3.port.iceberg=0 -s3.port.lance=0 -webdav=false -admin.ui=false \
  -master.telemetry=false "$@"
