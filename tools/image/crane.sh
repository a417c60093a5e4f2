#!/usr/bin/env bash
# crane.sh ARGS...: runs crane (go-containerregistry, pinned in
# tools/testenv/versions.env), building it into the cache first when
# missing. The release workflow logs in and joins per-architecture images
# into one index with it; push.sh pushes with it.
. "$(dirname "$0")/../testenv/lib.sh"
bash "$TESTENV_TOOLS_DIR/build.sh" crane
exec "$CACHE_DIR/bin/crane-$GO_CONTAINERREGISTRY_VERSION/crane" "$@"
