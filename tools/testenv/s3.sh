# The S3 store and STS: SeaweedFS `weed mini` (master, volume, filer, S3 and
# STS in one process). Sourced by build.sh and up.sh.

build_s3() {
  local v="$SEAWEEDFS_VERSION" dest="$CACHE_DIR/bin/seaweedfs-$SEAWEEDFS_VERSION"
  [ -x "$dest/weed" ] && return 0
  log "building SeaweedFS $v (first time only; about 8 minutes on 2 cores)"
  local mod="$CACHE_DIR/src/seaweedfs-$v" gomod
  gomod=$(upstream_gomod "github.com/seaweedfs/seaweedfs@$v")
  # Repeat upstream's replace directives that point at other modules.
  sed -n 's#^replace \(\S*\) => \([^.]\S*\) \(v\S*\)$#replace \1 => \2 \3#p' "$gomod" |
    consumer_module "$mod" 1.26.6 github.com/seaweedfs/seaweedfs "$v" github.com/seaweedfs/seaweedfs/weed
  go_build "$mod" "$dest" "-X github.com/seaweedfs/seaweedfs/weed/util/version.COMMIT=${v##*-}" \
    weed=github.com/seaweedfs/seaweedfs/weed
}

s3_link_binaries() {
  ln -s "$CACHE_DIR/bin/seaweedfs-$SEAWEEDFS_VERSION/weed" "$1/weed"
}

# N free ports, each with its gRPC twin p+10000 free too (SeaweedFS's
# convention), and no port equal to another's twin: weed refuses that.
free_port_pairs() {
  python3 - "$1" <<'PY'
import socket, sys
want, taken, held, ports = int(sys.argv[1]), set(), [], []
for _ in range(500):
    if len(ports) == want: break
    a = socket.socket(); a.bind(("127.0.0.1", 0)); p = a.getsockname()[1]
    if p + 10000 > 65535 or {p, p + 10000} & taken: a.close(); continue
    b = socket.socket()
    try:
        b.bind(("127.0.0.1", p + 10000))
        held += [a, b]; taken |= {p, p + 10000}; ports.append(p)
    except OSError:
        a.close(); b.close()
for s in held: s.close()
if len(ports) < want: sys.exit("no free port pairs")
print(" ".join(map(str, ports)))
PY
}

# Starts weed with root keys, one bucket, and an STS that trusts the
# apiserver's service-account issuer for audience sts.amazonaws.com, with one
# role allowed everything on that bucket. Needs API_URL, PKI, RUN, BIN and
# the TESTENV_* names set by up.sh.
s3_start() {
  local s3_port master_port volume_port filer_port admin_port cfg="$RUN/seaweedfs"
  read -r s3_port master_port volume_port filer_port admin_port < <(free_port_pairs 5)
  mkdir -p "$cfg/data"
  TESTENV_ROLE_ARN="arn:aws:iam::111122223333:role/upload-grant-operator"
  cat >"$cfg/s3.json" <<JSON
{"identities": [{"name": "root",
  "credentials": [{"accessKey": "$TESTENV_ROOT_ACCESS_KEY_ID", "secretKey": "$TESTENV_ROOT_SECRET_ACCESS_KEY"}],
  "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
JSON
  cat >"$cfg/iam.json" <<JSON
{
  "sts": {"tokenDuration": "${TESTENV_STS_SESSION:-1h}", "maxSessionLength": "12h", "issuer": "testenv-sts",
          "accountId": "111122223333", "signingKey": "$(openssl rand -base64 32)"},
  "policy": {"defaultEffect": "Deny", "storeType": "memory"},
  "providers": [{"name": "kubernetes", "type": "oidc", "enabled": true,
    "config": {"issuer": "$API_URL", "clientIds": ["sts.amazonaws.com"],
               "tlsCaCert": "$PKI/ca.crt", "jwksCacheTTLSeconds": 60}}],
  "roles": [{"roleName": "upload-grant-operator", "roleArn": "$TESTENV_ROLE_ARN",
    "trustPolicy": {"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
      "Principal": {"Federated": "kubernetes"}, "Action": ["sts:AssumeRoleWithWebIdentity"]}]},
    "attachedPolicies": ["TestenvBucket"]}],
  "policies": [{"name": "TestenvBucket", "document": {"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
    "Action": ["s3:*"], "Resource": ["arn:aws:s3:::$TESTENV_BUCKET", "arn:aws:s3:::$TESTENV_BUCKET/*"]}]}}]
}
JSON
  # No AWS_* variables: weed would turn them into another admin identity.
  start s3 env -u AWS_ACCESS_KEY_ID -u AWS_SECRET_ACCESS_KEY -u AWS_SESSION_TOKEN \
    "$BIN/weed" mini -dir="$cfg/data" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
    -master.port="$master_port" -volume.port="$volume_port" -filer.port="$filer_port" \
    -s3.port="$s3_port" -s3.port.iceberg=0 -s3.port.lance=0 \
    -admin.port="$admin_port" -admin.port.legacy=0 -admin.ui=false \
    -webdav=false -master.telemetry=false \
    -master.volumeSizeLimitMB=64 -volume.max=8 \
    -s3.config="$cfg/s3.json" -s3.iam.config="$cfg/iam.json" \
    -bucket="$TESTENV_BUCKET"
  TESTENV_S3_ENDPOINT="http://127.0.0.1:$s3_port"
  # SeaweedFS answers STS form posts on the S3 port.
  TESTENV_STS_ENDPOINT="$TESTENV_S3_ENDPOINT"
  wait_for s3 120 curl -sS -o /dev/null "$TESTENV_S3_ENDPOINT/"
  s3_set_cors
}

# The bucket accepts browser uploads (POST forms, PUT, GET) from pages served
# over http, as tests/browser_post.rs needs: rules set with the root keys by
# botocore (a SigV4 PutBucketCors is no job for curl). weed creates the
# bucket just after S3 answers, so the first tries may find no bucket.
s3_set_cors() {
  local venv tries=0
  venv=$(bash "$TESTENV_TOOLS_DIR/../pyvenv.sh" "botocore-$BOTOCORE_VERSION" "botocore==$BOTOCORE_VERSION")
  until TESTENV_ROOT_ACCESS_KEY_ID="$TESTENV_ROOT_ACCESS_KEY_ID" \
    TESTENV_ROOT_SECRET_ACCESS_KEY="$TESTENV_ROOT_SECRET_ACCESS_KEY" \
    "$venv/bin/python" "$TESTENV_TOOLS_DIR/s3_cors.py" "$TESTENV_S3_ENDPOINT" "$TESTENV_REGION" "$TESTENV_BUCKET" \
    2>"$LOGS/s3-cors.log"; do
    tries=$((tries + 1))
    if [ $tries -ge 50 ]; then
      tail -n 5 "$LOGS/s3-cors.log" >&2; die "could not set the bucket's CORS rules (log: $LOGS/s3-cors.log)"
    fi
    sleep 0.2
  done
}
