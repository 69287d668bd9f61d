# Shared by the measuring scripts (source it after distribution.sh, which defines port()): a
# single-node Garage on loopback with one bucket, `registry`, and a key that may use it.
#   garage_start WORKDIR   starts it (data under WORKDIR/garage), waits until it serves, and sets
#                          GARAGE_PID, GARAGE_ENDPOINT (http://127.0.0.1:PORT), GARAGE_KEY and
#                          GARAGE_SECRET; the caller stops it (kill "$GARAGE_PID").
# Needs `garage` (cargo install --locked garage).
garage_start() {
  local work=$1 rpc s3 admin node
  rpc=$(port); s3=$(port); admin=$(port)
  GARAGE_KEY=GK0123456789abcdef01234567
  GARAGE_SECRET=00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff
  mkdir -p "$work"
  cat > "$work/garage.toml" <<TOML
metadata_dir = "$work/garage/meta"
data_dir = "$work/garage/data"
db_engine = "lmdb"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$rpc"
rpc_public_addr = "127.0.0.1:$rpc"
rpc_secret = "$GARAGE_SECRET"
[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$s3"
root_domain = ".s3.garage.localhost"
[admin]
api_bind_addr = "127.0.0.1:$admin"
TOML
  RUST_LOG=warn garage -c "$work/garage.toml" server >"$work/garage.log" 2>&1 &
  GARAGE_PID=$!
  until garage -c "$work/garage.toml" status >/dev/null 2>&1; do
    kill -0 "$GARAGE_PID" 2>/dev/null || { echo "garage did not start: $work/garage.log" >&2; return 1; }
    sleep 0.2
  done
  node=$(garage -c "$work/garage.toml" node id -q | cut -d@ -f1)
  garage -c "$work/garage.toml" layout assign -z dc1 -c 10G "$node" >/dev/null
  garage -c "$work/garage.toml" layout apply --version 1 >/dev/null
  garage -c "$work/garage.toml" bucket create registry >/dev/null
  garage -c "$work/garage.toml" key import --yes -n registry "$GARAGE_KEY" "$GARAGE_SECRET" >/dev/null
  garage -c "$work/garage.toml" bucket allow --read --write --owner registry --key "$GARAGE_KEY" >/dev/null
  GARAGE_ENDPOINT="http://127.0.0.1:$s3"
}
