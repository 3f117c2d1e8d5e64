#!/usr/bin/env bash
# GPU checks of dlmesh, prepared here and run in one call on the device machine.
#
#   scripts/gpu-check.sh               build here (no GPU, no CUDA needed) into bin/, gzipped:
#                                      cuda.test nvml.test model.test engine.test dlmesh
#   scripts/gpu-check.sh --dry-run     build, then print every remote step and its timeout
#   scripts/gpu-check.sh --remote      on the device machine (no Go there), in order, each step
#                                      under a timeout, all output under $OUT (gpu-check.log,
#                                      one STEP.log per step, summary.txt):
#     0. identity   nvidia-smi: card, uuid, driver, memory; dlmesh gpus (NVML)
#     -  randckpt   in the background from the start: dlmesh randckpt --shape mini (32 GB of
#                   random bf16 weights in the HF layout) into $MESH_CKPT
#     1. kernels    cuda.test: binding smoke, every op against float64 references (incl.
#                   TestGPUExpertsFFN with bf16 activations), graph replay, the read-rate
#                   kernel, cuDeviceGetUuid (compared with nvidia-smi's uuid)
#     2. nvml       nvml.test
#     3. model      model.test on cuda: forward parity (forward_cases.json), TestExpertActBF16
#     4. bench      dlmesh bench --shape mini --random-weights: ctx BENCH_CTX × batch
#                   BENCH_BATCH × kv BENCH_KV × act BENCH_ACT, each row with its floor
#                   (bytes it must read / the read rate measured in the run) and ratio
#     5. mesh       dlmesh bench --mesh on the random mini checkpoint: the monolith, then
#                   attnd + MESH_GROUPS expertd as processes on the one GPU, at MESH_BATCH
#                   sequences; mesh/monolith and the hop per MoE layer
#     6. engine     the decoding fixtures through the engine on cuda (generate_cases.json)
#     7. kbench     kernel benchmarks (only with KERNEL_BENCH=1)
#   scripts/gpu-check.sh --remote STEPS   only the comma-separated steps named (e.g. bench,mesh)
#
# The device tool call (one call, about 8 minutes, under the 600 s a command may take):
#   run(command="bash scripts/gpu-check.sh --remote", carry=["bin"], timeout_s=600)
# BUDGET_S (default 560) is the time the remote part allows itself: a step gets what is left of
# it (at most its own timeout) and steps are skipped once too little is left, so $OUT always
# comes back with the figures measured so far.
set -uo pipefail
cd "$(dirname "$0")/.."

mode=${1:-build}
BENCH_CTX=${BENCH_CTX:-512,4096}
BENCH_BATCH=${BENCH_BATCH:-1,8,32}
BENCH_KV=${BENCH_KV:-f32,bf16}
BENCH_ACT=${BENCH_ACT:-f32,bf16}
BENCH_STEPS=${BENCH_STEPS:-20}
MESH_CKPT=${MESH_CKPT:-/tmp/dlmesh-mini}
MESH_CTX=${MESH_CTX:-512}
MESH_BATCH=${MESH_BATCH:-8,32}
MESH_KV=${MESH_KV:-bf16}
MESH_ACT=${MESH_ACT:-bf16}
MESH_GROUPS=${MESH_GROUPS:-2}
MESH_STEPS=${MESH_STEPS:-10}
MESH_WIRE=""
[[ "${MESH_WIRE_BF16:-0}" == 1 ]] && MESH_WIRE="--wire-bf16"
BUDGET_S=${BUDGET_S:-560}

build() {
	set -e
	mkdir -p bin
	rm -f bin/*.gz bin/*.test bin/dlmesh
	export GOOS=linux GOARCH=amd64
	export CGO_CFLAGS="${CGO_CFLAGS:--O2 -g} -Wno-deprecated-declarations" # go-nvml's deprecated NVML calls
	CGO_ENABLED=0 go test -c -ldflags='-s -w' -trimpath -o bin/cuda.test ./kernels/cuda
	CGO_ENABLED=1 go test -c -ldflags='-s -w' -trimpath -o bin/nvml.test ./kernels/cuda/nvml
	CGO_ENABLED=0 go test -c -ldflags='-s -w' -trimpath -o bin/model.test ./model
	CGO_ENABLED=0 go test -c -ldflags='-s -w' -trimpath -o bin/engine.test ./engine
	CGO_ENABLED=1 go build -ldflags='-s -w' -trimpath -o bin/dlmesh ./cmd/dlmesh
	# gzip: the device tool carries at most 64 MiB of ignored paths
	gzip -9 bin/cuda.test bin/nvml.test bin/model.test bin/engine.test bin/dlmesh
	local kib
	kib=$(du -sk bin | cut -f1)
	if ((kib > 60 * 1024)); then
		echo "bin/ is ${kib} KiB: over the 64 MiB the device tool carries" >&2
		exit 1
	fi
	ls -l bin
	echo "built bin/ (${kib} KiB); on the device machine: bash scripts/gpu-check.sh --remote"
	set +e
}

if [[ "$mode" == build ]]; then
	build
	exit 0
fi

DRY=0
if [[ "$mode" == --dry-run ]]; then
	build
	DRY=1
	OUT=${OUT:-$(mktemp -d)}
elif [[ "$mode" != --remote ]]; then
	echo "usage: $0 [--dry-run | --remote [STEPS]]" >&2
	exit 2
fi
STEPS=${2:-identity,kernels,nvml,model,bench,mesh,engine,kbench}
OUT=${OUT:-/tmp/gpu-check-out}
mkdir -p "$OUT"
log=$OUT/gpu-check.log
summary=$OUT/summary.txt
: >"$log"
: >"$summary"
t_start=$SECONDS
status=0

want() { [[ ",$STEPS," == *",$1,"* ]]; }

# step NAME TIMEOUT CMD...: run CMD under min(TIMEOUT, budget left), output to $OUT/NAME.log and
# the whole log; record the result in summary.txt.
step() {
	local name=$1 limit=$2
	shift 2
	local left=$((BUDGET_S - (SECONDS - t_start)))
	((limit > left)) && limit=$left
	echo "== $name (timeout ${limit}s): $*" | tee -a "$log"
	if ((DRY)); then
		echo "$name dry-run" >>"$summary"
		return 0
	fi
	if ((limit < 20)); then
		echo "$name SKIPPED (${left}s of the budget left)" | tee -a "$log" "$summary"
		status=1
		return 1
	fi
	local t0=$SECONDS rc
	timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1
	rc=$?
	cat "$OUT/$name.log" >>"$log"
	local verdict=ok
	if ((rc == 124 || rc == 137)); then
		verdict="TIMEOUT after ${limit}s"
	elif ((rc != 0)); then
		verdict="FAIL rc=$rc"
	fi
	[[ $verdict != ok ]] && status=1
	echo "$name $verdict ($((SECONDS - t0))s)" | tee -a "$summary"
	return $rc
}

if ((!DRY)); then
	for z in bin/*.gz; do [[ -e "$z" ]] && gunzip -f "$z"; done
	chmod +x bin/* 2>/dev/null
	export LD_LIBRARY_PATH="/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
fi
D=$PWD/bin

if want identity; then
	step identity 30 bash -c "nvidia-smi --query-gpu=name,uuid,driver_version,memory.total,memory.used --format=csv; $D/dlmesh gpus"
fi

ck_pid=""
if want mesh && ((!DRY)); then
	rm -rf "$MESH_CKPT"
	GOMAXPROCS=8 "$D/dlmesh" randckpt --shape mini --out "$MESH_CKPT" --seed 1 >"$OUT/randckpt.log" 2>&1 &
	ck_pid=$!
elif want mesh; then
	echo "== randckpt (background): $D/dlmesh randckpt --shape mini --out $MESH_CKPT --seed 1" | tee -a "$log"
fi

if want kernels; then
	step kernels 150 "$D/cuda.test" -test.v -test.run 'Test' -test.timeout 140s
	if ((!DRY)); then
		smi=$(nvidia-smi --query-gpu=uuid --format=csv,noheader -i 0 2>/dev/null | tr -d ' ')
		cu=$(grep -o 'cuda device 0 uuid: GPU-[0-9a-f-]*' "$OUT/kernels.log" | awk '{print $5}')
		if [[ -n "$cu" && "$cu" == "$smi" ]]; then
			echo "uuid ok: cuDeviceGetUuid = nvidia-smi = $cu" | tee -a "$log" "$summary"
		else
			echo "uuid MISMATCH: cuDeviceGetUuid '$cu', nvidia-smi '$smi'" | tee -a "$log" "$summary"
			status=1
		fi
		grep -E '^--- (FAIL|SKIP)' "$OUT/kernels.log" | tee -a "$summary"
		grep -E 'read rate:' "$OUT/kernels.log" | tee -a "$summary"
	fi
fi
if want nvml; then
	step nvml 30 "$D/nvml.test" -test.v
fi
if want model; then
	step model 150 bash -c "cd model && DLMESH_TEST_BACKEND=cuda $D/model.test -test.v -test.run 'Forward|Step|ExpertAct|SetKVDType' -test.timeout 140s"
	((DRY)) || grep -E '^--- (FAIL|SKIP)' "$OUT/model.log" | tee -a "$summary"
fi
if want bench; then
	step bench 240 "$D/dlmesh" bench --shape mini --random-weights --backend cuda --ctx "$BENCH_CTX" --batch "$BENCH_BATCH" \
		--kv-dtype "$BENCH_KV" --expert-act "$BENCH_ACT" --steps "$BENCH_STEPS"
	((DRY)) || grep -E 'read rate|backend|cuda:' "$OUT/bench.log" | grep -vE '^\s*kv |building' >>"$summary"
fi
if want mesh; then
	if [[ -n "$ck_pid" ]]; then
		left=$((BUDGET_S - (SECONDS - t_start) - 60))
		waited=0
		while kill -0 "$ck_pid" 2>/dev/null && ((waited < left)); do
			sleep 2
			waited=$((waited + 2))
		done
		if kill -0 "$ck_pid" 2>/dev/null; then
			kill "$ck_pid"
			echo "randckpt still writing after ${waited}s more: mesh skipped" | tee -a "$log" "$summary"
			status=1
		elif ! wait "$ck_pid"; then
			echo "randckpt FAIL (see randckpt.log)" | tee -a "$summary"
			status=1
		fi
		cat "$OUT/randckpt.log" >>"$log"
		grep -E 'done in' "$OUT/randckpt.log" | sed 's/^ */randckpt /' >>"$summary"
	fi
	if ((DRY)) || [[ -f "$MESH_CKPT/model.safetensors.index.json" ]]; then
		step mesh 300 "$D/dlmesh" bench --mesh --model "$MESH_CKPT" --backend cuda --ctx "$MESH_CTX" --batch "$MESH_BATCH" \
			--kv-dtype "$MESH_KV" --expert-act "$MESH_ACT" --groups "$MESH_GROUPS" --steps "$MESH_STEPS" $MESH_WIRE
		((DRY)) || grep -E 'attnd device|read rate|backend|cuda:' "$OUT/mesh.log" | grep -vE '^\s+(monolith|mesh|\[)' >>"$summary"
	fi
	((DRY)) || rm -rf "$MESH_CKPT"
fi
if want engine; then
	step engine 200 bash -c "cd engine && DLMESH_TEST_BACKEND=cuda $D/engine.test -test.v -test.run 'TestGenerateMatchesReference|TestGenerateBatchedMatchesReference' -test.timeout 190s"
	((DRY)) || grep -E '^--- (FAIL|SKIP)' "$OUT/engine.log" | tee -a "$summary"
fi
if want kbench && [[ "${KERNEL_BENCH:-0}" == 1 ]]; then
	step kbench 120 "$D/cuda.test" -test.run '^$' -test.bench "${BENCH:-.}" -test.benchtime "${BENCHTIME:-20x}" -test.timeout 115s
	if ((!DRY)); then
		printf '%-36s %12s %10s %8s\n' benchmark gpu-us/op GB/s experts | tee -a "$summary"
		grep -E '^Benchmark' "$OUT/kbench.log" | awk '{
			name=$1; us="-"; gbs="-"; ex="-";
			for (i=2;i<=NF;i++) { if ($i=="gpu-us/op") us=$(i-1); if ($i=="GB/s") gbs=$(i-1); if ($i=="experts") ex=$(i-1) }
			sub(/^Benchmark/,"",name); sub(/-[0-9]+$/,"",name);
			printf "%-36s %12s %10s %8s\n", name, us, gbs, ex }' | tee -a "$summary"
	fi
fi
echo "status: $status after $((SECONDS - t_start))s (summary: $summary, full log: $log)" | tee -a "$summary"
echo "----- summary"
cat "$summary"
exit $status
