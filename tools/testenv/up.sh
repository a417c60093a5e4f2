#!/usr/bin/env bash
# Starts etcd, kube-apiserver, the S3/STS server and a node (containerd,
# kube-controller-manager, kube-scheduler, kubelet, and the pod network with
# its forwarders; TESTENV_NODE=0 leaves it out) on free loopback ports and
# writes .testenv/env (and, with the node, .testenv/node-values.yaml).
# Running it again while they are up does nothing.
. "$(dirname "$0")/lib.sh"

STATE_DIR="${TESTENV_DIR:-$REPO_ROOT/.testenv}"
TESTENV_NODE="${TESTENV_NODE:-1}"
mkdir -p "$STATE_DIR"
exec 9>"$STATE_DIR/.lock"
flock 9

if [ -f "$STATE_DIR/env" ] && bash "$TESTENV_TOOLS_DIR/status.sh" >/dev/null 2>&1; then
  log "already running; reusing $STATE_DIR/env"
  exit 0
fi
bash "$TESTENV_TOOLS_DIR/down.sh" --locked >/dev/null 2>&1 || true

bash "$TESTENV_TOOLS_DIR/build.sh"

BIN="$STATE_DIR/bin" LOGS="$STATE_DIR/logs" PKI="$STATE_DIR/pki" RUN="$STATE_DIR/run"
# --one-file-system: never into a mount down.sh could not remove.
rm -rf --one-file-system "$BIN" "$LOGS" "$PKI" "$RUN" "$STATE_DIR/pids" "$STATE_DIR/cmd" "$STATE_DIR/users"
rm -f "$STATE_DIR/node-values.yaml"
mkdir -p "$BIN" "$LOGS" "$PKI" "$RUN" "$STATE_DIR/pids"
ln -s "$CACHE_DIR/bin/kubernetes-$KUBERNETES_VERSION/kube-apiserver" "$BIN/kube-apiserver"
ln -s "$CACHE_DIR/bin/kubernetes-$KUBERNETES_VERSION/kubectl" "$BIN/kubectl"
ln -s "$CACHE_DIR/bin/etcd-$ETCD_VERSION/etcd" "$BIN/etcd"
ln -s "$CACHE_DIR/bin/helm-$HELM_VERSION/helm" "$BIN/helm"
ln -s "$CACHE_DIR/bin/registry-$DISTRIBUTION_VERSION/registry" "$BIN/registry"
ln -s "$CACHE_DIR/bin/crane-$GO_CONTAINERREGISTRY_VERSION/crane" "$BIN/crane"
# The release's checkers (tests/release.rs).
ln -s "$CACHE_DIR/bin/actionlint-$ACTIONLINT_VERSION/actionlint" "$BIN/actionlint"
ln -s "$CACHE_DIR/bin/krew-$KREW_VERSION/kubectl-krew" "$BIN/kubectl-krew"
ln -s "$CACHE_DIR/bin/krew-$KREW_VERSION/validate-krew-manifest" "$BIN/validate-krew-manifest"
s3_link_binaries "$BIN"
[ "$TESTENV_NODE" = 0 ] || node_link_binaries "$BIN"

# The pod network first: the apiserver's certificate names its gateway.
[ "$TESTENV_NODE" = 0 ] || node_network_setup

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# start NAME CMD...: runs a server in its own session so it outlives this
# script, logs to $LOGS/NAME.log and records its pid for down.sh, and its
# command line in $STATE_DIR/cmd/NAME for proc.sh, which restarts it.
start() {
  local name=$1; shift
  mkdir -p "$STATE_DIR/cmd"
  printf '%q ' "$@" >"$STATE_DIR/cmd/$name"
  # 9>&-: the servers must not inherit (and so hold) the lock.
  setsid "$@" >"$LOGS/$name.log" 2>&1 </dev/null 9>&- &
  echo $! >"$STATE_DIR/pids/$name"
}

# wait_for NAME SECONDS CMD...: polls CMD until it succeeds, or fails with the
# server's log tail when the server died or the deadline passed.
wait_for() {
  local name=$1 secs=$2; shift 2
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    if ! kill -0 "$(cat "$STATE_DIR/pids/$name")" 2>/dev/null; then
      tail -n 30 "$LOGS/$name.log" >&2; die "$name exited during start-up (log: $LOGS/$name.log)"
    fi
    if [ $SECONDS -ge $deadline ]; then
      tail -n 30 "$LOGS/$name.log" >&2; die "$name not ready after ${secs}s (log: $LOGS/$name.log)"
    fi
    sleep 0.2
  done
}

# --- PKI: one CA for serving and client certs, an RSA key for SA tokens -----
(
  cd "$PKI"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
    -keyout ca.key -out ca.crt -subj "/CN=upload-grant-operator testenv CA" 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout apiserver.key \
    -out apiserver.csr -subj "/CN=kube-apiserver" 2>/dev/null
  # With the node, pods reach the apiserver at the pod network's gateway.
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost%s\nextendedKeyUsage=serverAuth\n' \
    "${TESTENV_POD_GATEWAY:+,IP:$TESTENV_POD_GATEWAY}" >apiserver.ext
  openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
    -extfile apiserver.ext -out apiserver.crt 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout admin.key \
    -out admin.csr -subj "/O=system:masters/CN=testenv-admin" 2>/dev/null
  printf 'extendedKeyUsage=clientAuth\n' >admin.ext
  openssl x509 -req -in admin.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
    -extfile admin.ext -out admin.crt 2>/dev/null
  openssl genrsa -out sa.key 2048 2>/dev/null
  openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
  [ "$TESTENV_NODE" = 0 ] || node_pki
)

# --- etcd ---------------------------------------------------------------------
ETCD_PORT=$(free_port) ETCD_PEER_PORT=$(free_port)
start etcd "$BIN/etcd" --name testenv --data-dir "$RUN/etcd" \
  --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
  --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-cluster "testenv=http://127.0.0.1:$ETCD_PEER_PORT" \
  --unsafe-no-fsync --quota-backend-bytes=8589934592
wait_for etcd 60 curl -fsS "http://127.0.0.1:$ETCD_PORT/health"

# --- the image registry -------------------------------------------------------
# The node pulls the operator's and the consumers' images from it, as a
# cluster pulls from ECR; tools/image/push.sh (`make push`) fills it.
REGISTRY_PORT=$(free_port)
TESTENV_REGISTRY="127.0.0.1:$REGISTRY_PORT"
mkdir -p "$RUN/registry"
cat >"$RUN/registry.yaml" <<YAML
version: 0.1
log: {level: warn, accesslog: {disabled: true}}
storage:
  filesystem: {rootdirectory: "$RUN/registry"}
  delete: {enabled: true}
http:
  addr: "$TESTENV_REGISTRY"
  secret: "$(openssl rand -hex 16)"
YAML
start registry "$BIN/registry" serve "$RUN/registry.yaml"
wait_for registry 30 curl -fsS "http://$TESTENV_REGISTRY/v2/"
# Plain HTTP to it, on loopback only; every other registry stays closed
# (node.sh's _default entry).
if [ "$TESTENV_NODE" != 0 ]; then
  mkdir -p "$RUN/containerd/certs.d/$TESTENV_REGISTRY"
  printf 'server = "http://%s"\n\n[host."http://%s"]\n  capabilities = ["pull", "resolve"]\n' \
    "$TESTENV_REGISTRY" "$TESTENV_REGISTRY" >"$RUN/containerd/certs.d/$TESTENV_REGISTRY/hosts.toml"
fi

# --- containerd (starts while the apiserver does) ------------------------------
[ "$TESTENV_NODE" = 0 ] || node_start_containerd

# --- kube-apiserver -----------------------------------------------------------
API_PORT=$(free_port)
API_URL="https://127.0.0.1:$API_PORT"
# Without a node there is no controller-manager to create the `default`
# ServiceAccounts the ServiceAccount admission plugin requires of every pod.
NODE_APISERVER_FLAGS=(--authorization-mode RBAC --disable-admission-plugins ServiceAccount)
# An audit log of what clients in the group testenv:audited do (not reads
# of single objects): the chaos suite gives each operator replica such an
# identity and counts, from the server's side, the writes each one made.
cat >"$RUN/audit-policy.yaml" <<'AUDIT'
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived, ResponseStarted]
rules:
- level: Metadata
  userGroups: [testenv:audited]
  verbs: [list, create, update, patch, delete, deletecollection]
- level: None
AUDIT
[ "$TESTENV_NODE" = 0 ] || node_apiserver_flags
# ShardedListAndWatch (alpha, KEP-5866): a list or watch may carry a
# shardSelector over the uid's hash; tests/sharding.rs checks the operator's
# shard arithmetic against it.
start kube-apiserver "$BIN/kube-apiserver" \
  --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
  --bind-address 127.0.0.1 --secure-port "$API_PORT" \
  --tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" \
  --client-ca-file "$PKI/ca.crt" \
  --anonymous-auth=true \
  --service-cluster-ip-range 10.0.0.0/24 \
  --advertise-address 127.0.0.1 \
  --service-account-issuer "$API_URL" \
  --service-account-jwks-uri "$API_URL/openid/v1/jwks" \
  --service-account-key-file "$PKI/sa.pub" \
  --service-account-signing-key-file "$PKI/sa.key" \
  --allow-privileged=true \
  --audit-policy-file "$RUN/audit-policy.yaml" --audit-log-path "$LOGS/audit.log" \
  --feature-gates ShardedListAndWatch=true \
  "${NODE_APISERVER_FLAGS[@]}"
wait_for kube-apiserver 120 curl -fsS --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" "$API_URL/readyz"

KUBECONFIG_FILE="$STATE_DIR/kubeconfig"
cat >"$KUBECONFIG_FILE" <<KCFG
apiVersion: v1
kind: Config
clusters:
- name: testenv
  cluster:
    server: $API_URL
    certificate-authority: $PKI/ca.crt
users:
- name: admin
  user:
    client-certificate: $PKI/admin.crt
    client-key: $PKI/admin.key
contexts:
- name: testenv
  context: {cluster: testenv, user: admin, namespace: default}
current-context: testenv
KCFG
chmod 600 "$KUBECONFIG_FILE"
# The STS is an anonymous OIDC relying party: let it read discovery and JWKS.
"$BIN/kubectl" --kubeconfig "$KUBECONFIG_FILE" create clusterrolebinding oidc-discovery-anonymous \
  --clusterrole system:service-account-issuer-discovery --group system:unauthenticated >/dev/null
wait_for kube-apiserver 30 curl -fsS --cacert "$PKI/ca.crt" "$API_URL/openid/v1/jwks"

# --- the node -----------------------------------------------------------------
if [ "$TESTENV_NODE" != 0 ]; then
  node_start_controllers
  node_start_kubelet
fi

# --- S3 and STS ------------------------------------------------------------------
TESTENV_REGION=us-east-1
TESTENV_BUCKET=testenv-bucket
TESTENV_ROOT_ACCESS_KEY_ID=TESTENVROOTACCESSKEY
TESTENV_ROOT_SECRET_ACCESS_KEY=$(openssl rand -hex 20)
s3_start
if [ "$TESTENV_NODE" != 0 ]; then
  # Pods reach the servers on the gateway address at their loopback ports.
  node_start_forwarders "$API_PORT" "${TESTENV_S3_ENDPOINT##*:}" "${TESTENV_STS_ENDPOINT##*:}"
  wait_for "pod-forward-$API_PORT" 10 curl -fsS --cacert "$PKI/ca.crt" "https://$TESTENV_POD_GATEWAY:$API_PORT/readyz"
  node_wait_ready
fi

cat >"$STATE_DIR/env" <<ENV
# Written by tools/testenv/up.sh; read with: source .testenv/env
export KUBECONFIG='$KUBECONFIG_FILE'
export TESTENV_DIR='$STATE_DIR'
export TESTENV_BIN='$BIN'
export TESTENV_LOG_DIR='$LOGS'
export TESTENV_CA_FILE='$PKI/ca.crt'
export TESTENV_APISERVER_URL='$API_URL'
export TESTENV_S3_ENDPOINT='$TESTENV_S3_ENDPOINT'
export TESTENV_STS_ENDPOINT='$TESTENV_STS_ENDPOINT'
export TESTENV_REGION='$TESTENV_REGION'
export TESTENV_BUCKET='$TESTENV_BUCKET'
export TESTENV_ROOT_ACCESS_KEY_ID='$TESTENV_ROOT_ACCESS_KEY_ID'
export TESTENV_ROOT_SECRET_ACCESS_KEY='$TESTENV_ROOT_SECRET_ACCESS_KEY'
export TESTENV_ROLE_ARN='$TESTENV_ROLE_ARN'
export TESTENV_STS_AUDIENCE='sts.amazonaws.com'
# The image registry on loopback (plain HTTP): push with
# tools/image/push.sh ARCHIVE \$TESTENV_REGISTRY/NAME:TAG (make push IMAGE=…)
export TESTENV_REGISTRY='$TESTENV_REGISTRY'
ENV
if [ "$TESTENV_NODE" != 0 ]; then
  cat >>"$STATE_DIR/env" <<ENV
export TESTENV_NODE_NAME='$TESTENV_NODE_NAME'
export TESTENV_CONTAINERD_ADDRESS='$NODE_CONTAINERD_SOCK'
export TESTENV_SANDBOX_IMAGE='$PAUSE_IMAGE'
# The operator's image as the node pulls it once pushed:
# make push IMAGE=\$TESTENV_IMAGE
export TESTENV_IMAGE='$TESTENV_REGISTRY/upload-grant-operator:dev'
# The pod network (pods without hostNetwork): their subnet, and the host's
# address on it where the apiserver, S3 and STS listen for them, at the same
# ports as on 127.0.0.1.
export TESTENV_POD_CIDR='$TESTENV_POD_CIDR'
export TESTENV_POD_GATEWAY='$TESTENV_POD_GATEWAY'
ENV
  # The chart's values for this node (helm install -f .testenv/node-values.yaml).
  cat >"$STATE_DIR/node-values.yaml" <<YAML
# Written by tools/testenv/up.sh: charts/upload-grant-operator on this node.
image:
  # The test environment's registry (on EKS: ECR, or the released image);
  # \`make push IMAGE=$TESTENV_REGISTRY/upload-grant-operator:dev\` puts it there.
  repository: $TESTENV_REGISTRY/upload-grant-operator
  # The local build's tag, not a released version.
  tag: dev
  # The tag moves with every push; tests pin the digest they pushed (image.digest).
  pullPolicy: Always
irsa:
  projectedToken:
    # No EKS pod-identity webhook here: the chart mounts the token the webhook would.
    enabled: true
  # The local STS's role (on EKS: the IAM role in the ServiceAccount's annotation).
  roleArn: "$TESTENV_ROLE_ARN"
  # The webhook would set the cluster's region; the local STS answers for this one.
  region: "$TESTENV_REGION"
  # The local STS (SeaweedFS) at the pod network's gateway instead of AWS's regional STS.
  stsEndpoint: "http://$TESTENV_POD_GATEWAY:${TESTENV_STS_ENDPOINT##*:}"
operator:
  env:
    # No kube-proxy: the kubernetes Service's ClusterIP does not route; the apiserver is at the gateway.
    - name: KUBERNETES_SERVICE_HOST
      value: "$TESTENV_POD_GATEWAY"
    # The apiserver's port on the gateway (its loopback port), not the Service's 443.
    - name: KUBERNETES_SERVICE_PORT
      value: "$API_PORT"
YAML
fi
log "ready: source $STATE_DIR/env  (logs in $LOGS)"
