#!/usr/bin/env bash
# make demo: the whole story on the local control plane — an issuer, an
# upload grant and a download grant, a file uploaded with curl through the
# Secret's URL and read back — then everything is cleaned up.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
say() { printf '    %s\n' "$*"; }

started_env=0
if ! bash tools/testenv/status.sh >/dev/null 2>&1; then
  step "Starting the local control plane, S3 store and STS (tools/testenv/up.sh)"
  bash tools/testenv/up.sh
  started_env=1
fi
set +u; . .testenv/env; set -u
export PATH="$TESTENV_BIN:$PATH"
NS="demo-$(date +%s)"
ISSUER="demo-$NS"
WORK="$(mktemp -d)"
OPERATOR_PID=""
cleanup() {
  step "Cleaning up"
  kubectl delete uploadgrant --all -n "$NS" --ignore-not-found --wait=true >/dev/null 2>&1 || true
  kubectl delete clustergrantissuer "$ISSUER" --ignore-not-found >/dev/null 2>&1 || true
  if [ -n "$OPERATOR_PID" ]; then kill -TERM "$OPERATOR_PID" 2>/dev/null; wait "$OPERATOR_PID" 2>/dev/null || true; fi
  kubectl delete namespace "$NS" --wait=false >/dev/null 2>&1 || true
  rm -rf "$WORK"
  if [ $started_env = 1 ]; then bash tools/testenv/down.sh; fi
  say "done"
}
trap cleanup EXIT

step "Installing the CRDs"
kubectl apply --server-side -f crds/ >/dev/null
kubectl wait --for=condition=Established crd/uploadgrants.grants.io crd/clustergrantissuers.grants.io >/dev/null
say "$(kubectl get crd -o name | grep grants.io | tr '\n' ' ')"

step "Building the operator"
cargo build --quiet --bin upload-grant-operator

step "Running the operator with IRSA-style credentials"
kubectl create namespace "$NS" >/dev/null
kubectl label namespace "$NS" team=demo >/dev/null
kubectl -n "$NS" create serviceaccount upload-grant-operator >/dev/null
kubectl -n "$NS" create token upload-grant-operator --audience sts.amazonaws.com >"$WORK/token"
say "service-account token for audience sts.amazonaws.com -> AssumeRoleWithWebIdentity at $TESTENV_STS_ENDPOINT"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
AWS_REGION="$TESTENV_REGION" AWS_ROLE_ARN="$TESTENV_ROLE_ARN" AWS_WEB_IDENTITY_TOKEN_FILE="$WORK/token" \
  AWS_ENDPOINT_URL_STS="$TESTENV_STS_ENDPOINT" AWS_EC2_METADATA_DISABLED=true \
  UPLOAD_GRANT_LISTEN_ADDRESS="127.0.0.1:$PORT" UPLOAD_GRANT_WATCH_NAMESPACE="$NS" \
  target/debug/upload-grant-operator >"$TESTENV_LOG_DIR/demo-operator.log" 2>&1 &
OPERATOR_PID=$!
for _ in $(seq 1 150); do
  curl -fsS "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1 && break
  kill -0 "$OPERATOR_PID" 2>/dev/null || { tail -20 "$TESTENV_LOG_DIR/demo-operator.log"; exit 1; }
  sleep 0.2
done
say "ready (log: $TESTENV_LOG_DIR/demo-operator.log)"

step "Creating a ClusterGrantIssuer: namespaces labelled team=demo may PUT and GET under their own prefix"
kubectl apply -f - >/dev/null <<YAML
apiVersion: grants.io/v1alpha1
kind: ClusterGrantIssuer
metadata: {name: $ISSUER}
spec:
  s3: {region: $TESTENV_REGION, endpoint: "$TESTENV_S3_ENDPOINT", forcePathStyle: true}
  allow:
  - namespaces: {matchLabels: {team: demo}}
    buckets: [$TESTENV_BUCKET]
    keyPrefixes: ["{namespace}/"]
    methods: [PUT, GET]
    maxTtl: 6h
    maxContentLength: 1Mi
YAML
kubectl get clustergrantissuer "$ISSUER"

printf 'day,total\n2026-11-29,42\n' >"$WORK/report.csv"
SIZE=$(wc -c <"$WORK/report.csv" | tr -d ' ')
step "Creating an upload grant (PUT, text/csv, exactly $SIZE bytes) and a download grant (GET)"
kubectl apply -n "$NS" -f - >/dev/null <<YAML
apiVersion: grants.io/v1alpha1
kind: UploadGrant
metadata: {name: report-upload}
spec:
  issuerRef: {name: $ISSUER}
  bucket: $TESTENV_BUCKET
  key: $NS/report.csv
  method: PUT
  ttl: 1h
  contentType: text/csv
  contentLength: $SIZE
---
apiVersion: grants.io/v1alpha1
kind: UploadGrant
metadata: {name: report-download}
spec:
  issuerRef: {name: $ISSUER}
  bucket: $TESTENV_BUCKET
  key: $NS/report.csv
  method: GET
  ttl: 15m
YAML
kubectl wait -n "$NS" --for=condition=Ready ug/report-upload ug/report-download --timeout=60s >/dev/null
kubectl get ug -n "$NS"
say "status of report-upload: fingerprint $(kubectl get ug report-upload -n "$NS" -o jsonpath='{.status.urlFingerprint}'), refreshes at $(kubectl get ug report-upload -n "$NS" -o jsonpath='{.status.refreshAt}')"

secret() { kubectl get secret "$1" -n "$NS" -o jsonpath="{.data.$2}" | base64 -d; }
send() { # SECRET [curl args...]: exactly the method, URL and headers the grant signed
  local name=$1; shift
  secret "$name" headers | python3 -c 'import json,sys; [print(f"{k}: {v}") for k,v in json.load(sys.stdin).items()]' >"$WORK/headers"
  curl --fail-with-body -sS -X "$(secret "$name" method)" -H @"$WORK/headers" "$@" "$(secret "$name" url)"
}

step "Uploading report.csv with curl through Secret report-upload (the URL itself is a credential and is not printed)"
say "Secret keys: $(kubectl get secret report-upload -n "$NS" -o jsonpath='{.data}' | python3 -c 'import json,sys; print(" ".join(sorted(json.load(sys.stdin))))')"
say "headers to send: $(secret report-upload headers)"
send report-upload --data-binary @"$WORK/report.csv"
say "uploaded"

step "Reading it back with curl through Secret report-download"
send report-download -o "$WORK/downloaded.csv"
sed 's/^/    | /' "$WORK/downloaded.csv"
cmp -s "$WORK/report.csv" "$WORK/downloaded.csv" && say "identical to what was uploaded" || { say "MISMATCH"; exit 1; }

step "Revoking: deleting the upload grant removes its Secret"
kubectl delete ug report-upload -n "$NS" --wait=true >/dev/null
kubectl get secret report-upload -n "$NS" >/dev/null 2>&1 && { say "Secret still there"; exit 1; } || say "Secret report-upload is gone"
