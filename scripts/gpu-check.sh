#!/usr/bin/env bash
# GPU checks of kernels/cuda.
#
#   scripts/gpu-check.sh            build the test binaries here (no GPU needed) into bin/
#   scripts/gpu-check.sh --remote   run them on the device machine (no Go there):
#                                   1. binding smoke test, op parity tests, graph replay, NVML
#                                   2. the tiny model's forward parity (forward_cases.json) and the
#                                      decoding fixtures through the engine, on the CUDA backend
#                                   3. dlmesh bench --shape mini --random-weights (512/4096 ctx,
#                                      batch 1/8/32, median of 20 graphed steps) for every
#                                      KV cache dtype × expert activation dtype in BENCH_KV and
#                                      BENCH_ACT (default f32,bf16 each), in one run
#                                   4. kernel benchmarks (KERNEL_BENCH=1), then a short table.
#
# The device tool call: run(command="bash scripts/gpu-check.sh --remote", carry=["bin"]).
# BENCHTIME (default 20x) sets -test.benchtime; BENCH (default .) filters the benchmarks.
set -uo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" != "--remote" ]]; then
	set -e
	mkdir -p bin
	export CGO_CFLAGS="${CGO_CFLAGS:--O2 -g} -Wno-deprecated-declarations" # go-nvml's deprecated NVML calls
	CGO_ENABLED=0 go test -c -ldflags='-s -w' -trimpath -o bin/cuda.test ./kernels/cuda
	CGO_ENABLED=1 go test -c -ldflags='-s -w' -trimpath -o bin/nvml.test ./kernels/cuda/nvml
	CGO_ENABLED=0 go test -c -ldflags='-s -w' -trimpath -o bin/model.test ./model
	CGO_ENABLED=0 go test -c -ldflags='-s -w' -trimpath -o bin/engine.test ./engine
	CGO_ENABLED=1 go build -ldflags='-s -w' -trimpath -o bin/dlmesh ./cmd/dlmesh
	# gzip: the device tool carries at most 64 MiB of ignored paths (40 MB raw, 15 MB gzipped)
	rm -f bin/*.gz
	gzip -9 bin/cuda.test bin/nvml.test bin/model.test bin/engine.test bin/dlmesh
	echo "built bin/{cuda,nvml,model,engine}.test.gz bin/dlmesh.gz; on the device machine: bash scripts/gpu-check.sh --remote"
	exit 0
fi

for z in bin/*.gz; do [[ -e "$z" ]] && gunzip -f "$z"; done
chmod +x bin/* 2>/dev/null
export LD_LIBRARY_PATH="/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
log=${OUT:-/tmp}/gpu-check.log
: >"$log"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | tee -a "$log"
status=0
echo "== tests" | tee -a "$log"
./bin/cuda.test -test.v -test.run 'Test' -test.timeout 100s 2>&1 | tee -a "$log" | grep -E '^(=== RUN|--- |\s+gpu_test|PASS|FAIL|ok|panic)|relative L2|seed|driver' || true
grep -q '^--- FAIL' "$log" && status=1
grep -q '^FAIL' "$log" && status=1
if [[ -x bin/nvml.test ]]; then
	echo "== nvml" | tee -a "$log"
	./bin/nvml.test -test.v 2>&1 | tee -a "$log" | tail -8
fi
echo "== model forward parity on cuda (forward_cases.json)" | tee -a "$log"
(cd model && DLMESH_TEST_BACKEND=cuda ../bin/model.test -test.v -test.run 'Forward|Step|ExpertAct' -test.timeout 120s 2>&1) | tee -a "$log" | grep -E '^(--- |ok|PASS|FAIL|panic)|tie|reference' | head -40
echo "== decoding fixtures on cuda (generate_cases.json)" | tee -a "$log"
(cd engine && DLMESH_TEST_BACKEND=cuda ../bin/engine.test -test.v -test.run 'TestGenerateMatchesReference|TestGenerateBatched' -test.timeout 200s 2>&1) | tee -a "$log" | grep -E '^\s*(--- |ok|PASS|FAIL|panic)|tie|want' | head -60
grep -q '^--- FAIL' "$log" && status=1
echo "== dlmesh bench --shape mini --random-weights" | tee -a "$log"
timeout 360 ./bin/dlmesh bench --shape mini --random-weights --backend cuda --ctx "${BENCH_CTX:-512,4096}" --batch "${BENCH_BATCH:-1,8,32}" \
	--kv-dtype "${BENCH_KV:-f32,bf16}" --expert-act "${BENCH_ACT:-f32,bf16}" --steps 20 2>&1 | tee -a "$log" || status=1
if [[ -x bin/dlmesh ]]; then ./bin/dlmesh gpus 2>&1 | tee -a "$log" || true; fi
if [[ "${KERNEL_BENCH:-0}" != 1 ]]; then
	echo "status: $status (full log: $log)"
	exit $status
fi
echo "== benchmarks" | tee -a "$log"
./bin/cuda.test -test.run '^$' -test.bench "${BENCH:-.}" -test.benchtime "${BENCHTIME:-20x}" -test.timeout 115s 2>&1 | tee -a "$log" >/dev/null
echo
printf '%-36s %12s %10s %8s\n' benchmark gpu-us/op GB/s experts
grep -E '^Benchmark' "$log" | awk '{
	name=$1; us="-"; gbs="-"; ex="-";
	for (i=2;i<=NF;i++) { if ($i=="gpu-us/op") us=$(i-1); if ($i=="GB/s") gbs=$(i-1); if ($i=="experts") ex=$(i-1) }
	sub(/^Benchmark/,"",name); sub(/-[0-9]+$/,"",name);
	printf "%-36s %12s %10s %8s\n", name, us, gbs, ex }'
grep -E '^(--- FAIL|FAIL|panic)' "$log" && status=1
echo "status: $status (full log: $log)"
exit $status
