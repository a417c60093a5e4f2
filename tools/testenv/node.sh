# The node: containerd (with Debian's runc), kube-controller-manager,
# kube-scheduler and a kubelet registered as TESTENV_NODE_NAME. Sourced by
# lib.sh; up.sh and down.sh call these functions.
#
# Everything lives under $STATE_DIR: containerd's root and state (and its
# socket), the kubelet's root dir and pod logs, and the pods' cgroups under a
# cgroup root of this environment's own, so that two environments on one
# machine do not meet.
#
# The pod network: a Linux bridge of this environment's own (ugo + 8 hex
# digits of a hash of $STATE_DIR) with a /24 from 10.128.0.0/9 that no
# address or route on the machine overlaps, the host's end at .1
# (TESTENV_POD_GATEWAY). The CNI `bridge` plugin with `host-local` IPAM puts
# each pod on it with an address from that /24 and no other route: no
# default route, no masquerading, no IP forwarding, no kube-proxy, so a pod
# reaches the other pods, the host's .1 address and nothing else. The
# apiserver, S3 and STS stay on 127.0.0.1; a socat forwarder per port
# listens on the gateway address (accepting the pod subnet only) at the
# same port number, and the apiserver's certificate names the gateway
# address too. hostNetwork pods work as before. down.sh removes the bridge,
# the forwarders and the CNI state.

# The kubelet refuses a loopback --node-ip, so the apiserver reaches it by
# its Hostname address instead, which is the node's name: `localhost`
# resolves to 127.0.0.1 from /etc/hosts, without asking any DNS server. (The
# node's InternalIP is then the machine's own address; nothing connects to
# it: the kubelet listens on 127.0.0.1 only.)
TESTENV_NODE_NAME=localhost

node_link_binaries() {
  local b
  for b in kubelet kube-controller-manager kube-scheduler; do
    ln -s "$CACHE_DIR/bin/kubernetes-node-$KUBERNETES_VERSION/$b" "$1/$b"
  done
  for b in containerd ctr containerd-shim-runc-v2; do
    ln -s "$CACHE_DIR/bin/containerd-$CONTAINERD_VERSION/$b" "$1/$b"
  done
}

# The cgroup (in every v1 hierarchy) the kubelet puts pods under.
node_cgroup_root() {
  printf '/ugo-testenv-%s' "$(printf %s "$STATE_DIR" | sha256sum | cut -c1-10)"
}

# kubeconfig FILE CERT KEY: a kubeconfig for one of the node's components.
node_kubeconfig() {
  cat >"$1" <<KCFG
apiVersion: v1
kind: Config
clusters:
- name: testenv
  cluster: {server: "$API_URL", certificate-authority: "$PKI/ca.crt"}
users:
- name: user
  user: {client-certificate: "$2", client-key: "$3"}
contexts:
- name: testenv
  context: {cluster: testenv, user: user}
current-context: testenv
KCFG
  chmod 600 "$1"
}

# Client certificates of the node's components (RBAC's bootstrap roles and
# the Node authorizer know these names), the apiserver's client certificate
# for the kubelet, and the kubelet's serving certificate. Runs in $PKI.
node_pki() {
  local name subj
  for pair in "kubelet:/O=system:nodes/CN=system:node:$TESTENV_NODE_NAME" \
    "kube-controller-manager:/CN=system:kube-controller-manager" \
    "kube-scheduler:/CN=system:kube-scheduler" \
    "apiserver-kubelet-client:/O=system:masters/CN=kube-apiserver-kubelet-client"; do
    name=${pair%%:*} subj=${pair#*:}
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$name.key" \
      -out "$name.csr" -subj "$subj" 2>/dev/null
    openssl x509 -req -in "$name.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
      -extfile admin.ext -out "$name.crt" 2>/dev/null
  done
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout kubelet-serving.key \
    -out kubelet-serving.csr -subj "/CN=$TESTENV_NODE_NAME" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,DNS:%s\nextendedKeyUsage=serverAuth\n' "$TESTENV_NODE_NAME" >kubelet-serving.ext
  openssl x509 -req -in kubelet-serving.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
    -extfile kubelet-serving.ext -out kubelet-serving.crt 2>/dev/null
}

# The apiserver's flags that the node needs: the Node authorizer, a client
# certificate towards the kubelet (whose certificate it verifies, reaching it
# at its Hostname address, localhost), and the ServiceAccount admission plugin so
# that pods get their projected service-account token as on a real cluster
# (kube-controller-manager creates the `default` ServiceAccounts it needs).
node_apiserver_flags() {
  NODE_APISERVER_FLAGS=(
    --authorization-mode Node,RBAC
    --enable-admission-plugins NodeRestriction
    --kubelet-client-certificate "$PKI/apiserver-kubelet-client.crt"
    --kubelet-client-key "$PKI/apiserver-kubelet-client.key"
    --kubelet-certificate-authority "$PKI/ca.crt"
    --kubelet-preferred-address-types Hostname
  )
}

node_start_containerd() {
  local dir="$RUN/containerd"
  NODE_CONTAINERD_SOCK="$dir/containerd.sock"
  mkdir -p "$dir/root" "$dir/state" "$dir/certs.d/_default" "$RUN/cni/net.d" "$RUN/cni/bin"
  # Every registry resolves to a closed loopback port: an image that was not
  # imported fails to pull at once, and no pull ever leaves the machine.
  printf 'server = "http://127.0.0.1:9"\n' >"$dir/certs.d/_default/hosts.toml"
  node_cni_config
  cat >"$dir/config.toml" <<TOML
version = 3
root = "$dir/root"
state = "$dir/state"
[grpc]
  address = "$NODE_CONTAINERD_SOCK"
[ttrpc]
  address = "$NODE_CONTAINERD_SOCK.ttrpc"
[plugins.'io.containerd.internal.v1.opt']
  path = "$dir/opt"
[plugins.'io.containerd.nri.v1.nri']
  disable = true
[plugins.'io.containerd.grpc.v1.cri']
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "$PAUSE_IMAGE"
  [plugins.'io.containerd.cri.v1.images'.registry]
    config_path = "$dir/certs.d"
[plugins.'io.containerd.cri.v1.runtime']
  # Without CAP_SYS_RESOURCE a negative oom_score_adj is refused, and runc
  # then fails every sandbox; keep containers' scores at containerd's or above.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  cdi_spec_dirs = []
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["$RUN/cni/bin"]
    conf_dir = "$RUN/cni/net.d"
  [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
      BinaryName = "$(command -v runc)"
      Root = "$dir/runc"
      SystemdCgroup = false
TOML
  # PATH: containerd finds its shim there.
  start containerd env PATH="$BIN:$PATH" "$BIN/containerd" --config "$dir/config.toml"
  wait_for containerd 60 "$BIN/ctr" --address "$NODE_CONTAINERD_SOCK" version
  "$BIN/ctr" --address "$NODE_CONTAINERD_SOCK" -n k8s.io images import \
    "$CACHE_DIR/bin/pause-$PAUSE_SOURCE_HASH/pause.oci.tar" >>"$LOGS/ctr-import.log" 2>&1 ||
    die "cannot import the pause image (log: $LOGS/ctr-import.log)"
}

# --- The pod network ----------------------------------------------------------

# This environment's bridge, also the CNI network's name: at most 15
# characters (a Linux interface name).
node_bridge_name() {
  printf 'ugo%s' "$(printf %s "$STATE_DIR" | sha256sum | cut -c1-8)"
}

# node_pick_subnet HEX: the first /24 of 10.128.0.0/9, starting at one derived
# from HEX, that overlaps no address and no route (other than a default
# route) on the machine, another environment's bridge included.
node_pick_subnet() {
  python3 - "$1" <<'PY'
import ipaddress, subprocess, sys
used = []
kinds = {"unicast", "local", "broadcast", "multicast", "anycast", "blackhole",
         "unreachable", "prohibit", "throw", "nat"}
for cmd in (["ip", "-4", "-o", "addr", "show"], ["ip", "-4", "route", "show", "table", "all"]):
    for line in subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines():
        words = line.split()
        if "inet" in words:
            words = words[words.index("inet") + 1:]
        elif words and words[0] in kinds:
            words = words[1:]
        try:
            net = ipaddress.ip_network(words[0], strict=False)
        except (IndexError, ValueError):
            continue  # "default", or not an address
        if net.prefixlen > 0:
            used.append(net)
start = int(sys.argv[1][:4], 16) % 32768
for i in range(32768):
    n = (start + i) % 32768
    net = ipaddress.ip_network(f"10.{128 + n // 256}.{n % 256}.0/24")
    if not any(net.overlaps(u) for u in used):
        print(net)
        break
else:
    sys.exit("no free /24 in 10.128.0.0/9")
PY
}

# Creates this environment's bridge with a free /24, the host's end at .1.
# Sets NODE_BRIDGE, TESTENV_POD_CIDR and TESTENV_POD_GATEWAY. The choice and
# the address are made under a machine-wide lock, so that two environments
# starting at once do not pick the same /24.
node_network_setup() {
  local lockdir=/run/ugo-testenv
  NODE_BRIDGE=$(node_bridge_name)
  mkdir -p "$lockdir"
  exec 8<"$lockdir"
  flock 8
  ! ip link show "$NODE_BRIDGE" >/dev/null 2>&1 || ip link del "$NODE_BRIDGE"
  TESTENV_POD_CIDR=$(node_pick_subnet "${NODE_BRIDGE#ugo}") || die "no free subnet for the pod network"
  TESTENV_POD_GATEWAY="${TESTENV_POD_CIDR%.0/24}.1"
  # A fixed (locally administered) MAC: a bridge without one takes the
  # lowest of its ports' and changes it as pods come and go, and pods that
  # cached the gateway's old MAC then lose their connections until ARP
  # notices (seen: a pod's apiserver connection stalled when another pod left).
  local h=${NODE_BRIDGE#ugo}
  ip link add "$NODE_BRIDGE" address "02:00:${h:0:2}:${h:2:2}:${h:4:2}:${h:6:2}" type bridge
  ip addr add "$TESTENV_POD_GATEWAY/24" dev "$NODE_BRIDGE"
  ip link set "$NODE_BRIDGE" up
  exec 8<&-
  log "pod network $TESTENV_POD_CIDR on bridge $NODE_BRIDGE"
}

# The CNI plugins (bridge, host-local, and loopback, which containerd runs
# for every pod itself) and the network's configuration. isGateway is false:
# the bridge already has the .1 address, and with isGateway the plugin would
# turn on net.ipv4.ip_forward for the whole machine. No route is given to
# the pods beyond their own /24.
node_cni_config() {
  local b
  for b in bridge host-local loopback; do
    ln -sf "$CACHE_DIR/bin/cni-plugins-$CNI_PLUGINS_VERSION/$b" "$RUN/cni/bin/$b"
  done
  cat >"$RUN/cni/net.d/10-$NODE_BRIDGE.conflist" <<CNI
{
  "cniVersion": "1.0.0",
  "name": "$NODE_BRIDGE",
  "plugins": [{
    "type": "bridge",
    "bridge": "$NODE_BRIDGE",
    "isGateway": false,
    "isDefaultGateway": false,
    "ipMasq": false,
    "hairpinMode": true,
    "ipam": {
      "type": "host-local",
      "dataDir": "$RUN/cni/ipam",
      "ranges": [[{"subnet": "$TESTENV_POD_CIDR", "gateway": "$TESTENV_POD_GATEWAY"}]],
      "routes": []
    }
  }]
}
CNI
}

# node_start_forwarders PORT...: for each port, a socat listening on the
# gateway address at that port, for the pod subnet only, and forwarding to
# the same port on 127.0.0.1, where the servers listen.
node_start_forwarders() {
  local port
  for port in $(printf '%s\n' "$@" | sort -un); do
    start "pod-forward-$port" socat \
      "TCP-LISTEN:$port,bind=$TESTENV_POD_GATEWAY,fork,reuseaddr,range=$TESTENV_POD_CIDR" "TCP:127.0.0.1:$port"
    # shellcheck disable=SC2016 # expanded by the inner bash
    wait_for "pod-forward-$port" 10 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$TESTENV_POD_GATEWAY" "$port"
  done
}

# After every process is stopped and the pods' network namespaces are
# unmounted (their veths go with them): removes the bridge, the host-local
# leases, and this environment's entries in libcni's result cache, which
# containerd keeps in /var/lib/cni whatever it is told (a pod whose sandbox
# is deleted through ctr never gets its CNI DEL).
node_network_cleanup() {
  local br port f
  br=$(node_bridge_name)
  if ip link show "$br" >/dev/null 2>&1; then
    for port in $(ip -o link show master "$br" | awk -F': ' '{print $2}' | cut -d@ -f1); do
      ip link del "$port" 2>/dev/null || true
    done
    ip link del "$br"
  fi
  rm -rf --one-file-system "$STATE_DIR/run/cni/ipam"
  for f in /var/lib/cni/results/*; do
    [ -f "$f" ] || continue
    if grep -qF -e "\"netns\":\"$STATE_DIR/" -e "\"netns\":\"$(realpath -m "$STATE_DIR")/" "$f"; then
      rm -f "$f"
    fi
  done
}

node_start_controllers() {
  local name port
  for name in kube-controller-manager kube-scheduler; do
    node_kubeconfig "$PKI/$name.kubeconfig" "$PKI/$name.crt" "$PKI/$name.key"
  done
  port=$(free_port)
  # Every default controller, each with its own ServiceAccount; the key and
  # CA are the ones the apiserver signs and serves with.
  start kube-controller-manager "$BIN/kube-controller-manager" \
    --kubeconfig "$PKI/kube-controller-manager.kubeconfig" \
    --authentication-kubeconfig "$PKI/kube-controller-manager.kubeconfig" \
    --authorization-kubeconfig "$PKI/kube-controller-manager.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$port" --leader-elect=false \
    --use-service-account-credentials=true \
    --service-account-private-key-file "$PKI/sa.key" \
    --root-ca-file "$PKI/ca.crt" \
    --flex-volume-plugin-dir "$RUN/kube-controller-manager/volume-plugins"
  NODE_KCM_HEALTHZ="https://127.0.0.1:$port/healthz"
  port=$(free_port)
  start kube-scheduler "$BIN/kube-scheduler" \
    --kubeconfig "$PKI/kube-scheduler.kubeconfig" \
    --authentication-kubeconfig "$PKI/kube-scheduler.kubeconfig" \
    --authorization-kubeconfig "$PKI/kube-scheduler.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$port" --leader-elect=false
  NODE_SCHEDULER_HEALTHZ="https://127.0.0.1:$port/healthz"
}

# The kubelet sets a few kernel settings every node runs with (it refuses to
# start when told not to): vm.overcommit_memory=1, vm.panic_on_oom=0,
# kernel.panic=10, kernel.panic_on_oops=1, kernel.keys.root_max*. The first
# kubelet on the machine records the values it found, and the last down.sh
# puts them back.
NODE_SYSCTLS=(vm/overcommit_memory vm/panic_on_oom kernel/panic kernel/panic_on_oops
  kernel/keys/root_maxkeys kernel/keys/root_maxbytes)
NODE_SYSCTL_SAVE=/run/ugo-testenv/sysctl.orig
# Whether a kubelet runs on this machine (ours or another environment's).
node_any_kubelet() {
  local p
  for p in /proc/[0-9]*; do
    [ "$(basename "$(readlink "$p/exe" 2>/dev/null)")" = kubelet ] && return 0
  done
  return 1
}
node_save_sysctls() {
  local k
  [ ! -f "$NODE_SYSCTL_SAVE" ] && ! node_any_kubelet || return 0
  mkdir -p "$(dirname "$NODE_SYSCTL_SAVE")"
  for k in "${NODE_SYSCTLS[@]}"; do echo "$k $(cat "/proc/sys/$k")"; done >"$NODE_SYSCTL_SAVE.tmp"
  mv "$NODE_SYSCTL_SAVE.tmp" "$NODE_SYSCTL_SAVE"
}
# Once no kubelet runs on the machine: the kernel settings back, and the
# few paths outside $STATE_DIR that the kubelet and containerd's shims use
# whatever they are told (the device-plugin socket, the shims' sockets, the
# kubelet's log links, libcni's result cache) removed when nothing is left in
# them.
node_last_cleanup() {
  local k v
  ! node_any_kubelet || return 0
  if [ -f "$NODE_SYSCTL_SAVE" ]; then
    while read -r k v; do echo "$v" >"/proc/sys/$k" || log "warning: cannot restore $k=$v"; done <"$NODE_SYSCTL_SAVE"
    rm -f "$NODE_SYSCTL_SAVE"
    rmdir "$(dirname "$NODE_SYSCTL_SAVE")" 2>/dev/null || true
  fi
  [ ! -S /var/lib/kubelet/device-plugins/kubelet.sock ] || rm -f /var/lib/kubelet/device-plugins/kubelet.sock
  rmdir /var/lib/kubelet/device-plugins /var/lib/kubelet /run/containerd/s /run/containerd \
    /var/log/containers /var/lib/cni/results /var/lib/cni 2>/dev/null || true
}

node_start_kubelet() {
  local dir="$RUN/kubelet" cgroup_root h port healthz_port
  node_save_sysctls
  cgroup_root=$(node_cgroup_root)
  # With the cgroupfs driver the kubelet wants its cgroup root to exist in
  # every hierarchy; cpuset needs its CPUs and memory nodes filled in.
  for h in /sys/fs/cgroup/*/; do
    [ -e "$h/cgroup.procs" ] || continue
    mkdir -p "$h$cgroup_root"
    if [ -e "$h/cpuset.cpus" ]; then
      cat "$h/cpuset.cpus" >"$h$cgroup_root/cpuset.cpus"
      cat "$h/cpuset.mems" >"$h$cgroup_root/cpuset.mems"
    fi
  done
  mkdir -p "$dir/root" "$dir/pod-logs" "$dir/volume-plugins"
  node_kubeconfig "$PKI/kubelet.kubeconfig" "$PKI/kubelet.crt" "$PKI/kubelet.key"
  port=$(free_port) healthz_port=$(free_port)
  cat >"$dir/config.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: 127.0.0.1
port: $port
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $healthz_port
tlsCertFile: $PKI/kubelet-serving.crt
tlsPrivateKeyFile: $PKI/kubelet-serving.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization: {mode: Webhook}
containerRuntimeEndpoint: unix://$NODE_CONTAINERD_SOCK
# This machine's cgroups are v1 (/sys/fs/cgroup is a tmpfs of v1
# hierarchies): Kubernetes 1.35+ refuses them unless told otherwise, and
# there is no systemd to delegate to.
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: $cgroup_root
failSwapOn: false
podLogsDir: $dir/pod-logs
volumePluginDir: $dir/volume-plugins
# No iptables rules on the host.
makeIPTablesUtilChains: false
# The machine's disks are shared: do not evict or taint for disk pressure,
# and do not garbage-collect images someone imported for a test.
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%, nodefs.inodesFree: 1%}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
rotateCertificates: false
YAML
  start kubelet "$BIN/kubelet" --config "$dir/config.yaml" --kubeconfig "$PKI/kubelet.kubeconfig" \
    --root-dir "$dir/root" --hostname-override "$TESTENV_NODE_NAME"
  NODE_KUBELET_HEALTHZ="http://127.0.0.1:$healthz_port/healthz"
}

node_wait_ready() {
  wait_for kube-controller-manager 60 curl -fsSk "$NODE_KCM_HEALTHZ"
  wait_for kube-scheduler 60 curl -fsSk "$NODE_SCHEDULER_HEALTHZ"
  wait_for kubelet 60 curl -fsS "$NODE_KUBELET_HEALTHZ"
  wait_for kubelet 120 "$BIN/kubectl" --kubeconfig "$KUBECONFIG_FILE" wait --for=condition=Ready \
    "node/$TESTENV_NODE_NAME" --timeout=1s
  # Pods need their namespace's `default` ServiceAccount; make sure the
  # controller that creates them has caught up with the existing namespaces.
  wait_for kube-controller-manager 60 "$BIN/kubectl" --kubeconfig "$KUBECONFIG_FILE" \
    get serviceaccount default -n default
}

# Deletes every container (sandboxes included) through containerd, which
# unmounts their root filesystems. Needs containerd running.
node_remove_containers() {
  local sock="$STATE_DIR/run/containerd/containerd.sock" id
  local ctr=("$STATE_DIR/bin/ctr" --address "$sock" -n k8s.io)
  [ -S "$sock" ] && [ -x "${ctr[0]}" ] || return 0
  "${ctr[@]}" version >/dev/null 2>&1 || return 0
  for id in $("${ctr[@]}" tasks ls -q 2>/dev/null); do
    "${ctr[@]}" tasks delete --force "$id" >/dev/null 2>&1 || true
  done
  for id in $("${ctr[@]}" containers ls -q 2>/dev/null); do
    "${ctr[@]}" containers delete "$id" >/dev/null 2>&1 || true
  done
}

# After every process is stopped: kills what is left in the node's cgroups
# and this containerd's shims, unmounts everything under $STATE_DIR (pod
# volumes, sandbox shm, overlay root filesystems, the kubelet's own bind
# mount), removes the cgroups, the kubelet's log symlinks and the pod network.
node_cleanup() {
  local state sock cgroup_root p pid h m i
  state=$(realpath -m "$STATE_DIR")
  sock="$state/run/containerd/containerd.sock"
  cgroup_root=$(node_cgroup_root)
  for i in 1 2 3 4 5; do
    local killed=0
    for p in /proc/[0-9]*; do
      pid=${p#/proc/}
      if grep -q ":$cgroup_root\(/\|$\)" "$p/cgroup" 2>/dev/null ||
        { [ "$(basename "$(readlink "$p/exe" 2>/dev/null)")" = containerd-shim-runc-v2 ] &&
          tr '\0' '\n' <"$p/cmdline" 2>/dev/null | grep -qxF -- "$sock"; }; then
        kill -KILL "$pid" 2>/dev/null && killed=1
      fi
    done
    [ $killed = 1 ] || break
    sleep 0.2
  done
  for i in 1 2 3 4 5; do
    m=$(awk -v p="$state/" 'index($2, p) == 1 {print $2}' /proc/mounts | sort -r)
    [ -n "$m" ] || break
    while read -r p; do umount "$p" 2>/dev/null || umount -l "$p" 2>/dev/null || true; done <<<"$m"
  done
  if awk -v p="$state/" 'index($2, p) == 1 {found=1} END {exit !found}' /proc/mounts; then
    die "mounts left under $state: $(awk -v p="$state/" 'index($2, p) == 1 {print $2}' /proc/mounts | tr '\n' ' ')"
  fi
  for h in /sys/fs/cgroup/*/; do
    [ -d "$h$cgroup_root" ] || continue
    find "$h$cgroup_root" -depth -type d -exec rmdir {} + 2>/dev/null || true
    [ ! -d "$h$cgroup_root" ] || log "warning: cannot remove cgroup $h$cgroup_root"
  done
  if [ -d /var/log/containers ]; then
    for p in /var/log/containers/*; do
      [ -L "$p" ] && case "$(readlink "$p")" in "$state"/*) rm -f "$p" ;; esac
    done
  fi
  node_network_cleanup
  node_last_cleanup
  return 0
}
