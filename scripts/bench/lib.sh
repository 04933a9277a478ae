# Shared by the file-system benchmarks (sourced, not run): a storage node on
# a file-backed volume on loopback, the file system made on it, its manager,
# and mounts; everything started here is stopped by its PID on exit, newest
# first, so mounts go before the daemons they talk to.
# After `bench_fs NAME SIZE`: $bin, $work, $A (the volume's address args),
# $MGR (the manager's address), and `bench_mount DIR [mount args...]`.

bench_fs() { # name volume-size
    bin=$PWD/target/release
    work=$(mktemp -d "/tmp/tidepool-$1.XXXXXX")
    pids=()
    trap bench_cleanup EXIT
    local port=$((20000 + RANDOM % 20000))
    MGR=127.0.0.1:$((port + 1))
    BENCH_DM_PORT=$((port + 10))
    $bin/storage-node --file "$work/vol.img" --size "$2" --create --allow-any-host --listen 127.0.0.1:$port \
        --discovery-listen 127.0.0.1:0 >"$work/sn.out" 2>"$work/sn.log" &
    pids+=($!)
    for _ in $(seq 100); do grep "listening on" "$work/sn.out" >/dev/null 2>&1 && break; sleep 0.1; done
    A=(--addr 127.0.0.1:$port --nqn nqn.2026-11.io.tidepool:vol0)
    $bin/tidepool mkfs "${A[@]}" >/dev/null
    $bin/tidepool fs-manager "${A[@]}" --listen "$MGR" >"$work/mgr.out" 2>"$work/mgr.log" &
    pids+=($!)
    for _ in $(seq 100); do grep serving "$work/mgr.out" >/dev/null 2>&1 && break; sleep 0.1; done
}

bench_mount() { # dir [mount args...]
    local d=$1
    shift
    mkdir -p "$d"
    $bin/tidepool mount "${A[@]}" --manager "$MGR" --name "$(basename "$d")" "$@" "$d" >"$d.out" 2>"$d.log" &
    pids+=($!)
    for _ in $(seq 100); do grep mounted "$d.out" >/dev/null 2>&1 && break; sleep 0.1; done
}

bench_cleanup() {
    for m in "$work"/mnt* "$work/bind"; do
        mountpoint -q "$m" 2>/dev/null && { fusermount3 -u "$m" 2>/dev/null || umount -l "$m"; }
    done
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do kill "${pids[i]}" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
