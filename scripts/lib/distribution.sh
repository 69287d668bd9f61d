# Shared by the benchmark scripts (source it): a free loopback port, and the CNCF Distribution
# configuration they compare against.

# A TCP port on 127.0.0.1 that was free a moment ago.
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# distribution_config FILE ROOTDIR PORT [HTPASSWD]: filesystem storage under ROOTDIR, deletes on,
# in-memory blob descriptor cache, upload purging off, quiet logs; HTTP Basic from HTPASSWD.
# With GARAGE_ENDPOINT set (see garage.sh), storage is its bucket `registry` under the key
# prefix ROOTDIR instead, and blobs are served through Distribution (no redirects to S3), as
# this registry serves them by default.
distribution_config() {
  local file=$1 root=$2 port=$3 htpasswd=${4:-} storage
  if [ -n "${GARAGE_ENDPOINT:-}" ]; then
    storage="  s3:
    region: garage
    regionendpoint: $GARAGE_ENDPOINT
    bucket: registry
    accesskey: $GARAGE_KEY
    secretkey: $GARAGE_SECRET
    secure: false
    v4auth: true
    rootdirectory: $root
  redirect:
    disable: true"
  else
    storage="  filesystem:
    rootdirectory: $root"
  fi
  cat > "$file" <<YAML
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
$storage
  delete:
    enabled: true
  cache:
    blobdescriptor: inmemory
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:$port
YAML
  if [ -n "$htpasswd" ]; then
    printf 'auth:\n  htpasswd:\n    realm: Registry\n    path: %s\n' "$htpasswd" >> "$file"
  fi
}
