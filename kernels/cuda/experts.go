package cuda

import (
	"fmt"
	"slices"
	"unsafe"

	"github.com/dlmesh/dlmesh/kernels"
)

// Router implements kernels.Backend (one warp per token; see router in llada2.cu).
func (b *Backend) Router(ids, weights, logits, bias *kernels.Tensor, allowed []bool, p kernels.RouterParams) error {
	const op = "router"
	return b.do(func() error {
		if err := firstErr(b.own(op, ids, weights, logits), kernels.CheckDType(op, "ids", ids, kernels.I32),
			kernels.CheckDType(op, "weights", weights, kernels.F32), kernels.CheckDType(op, "logits", logits, kernels.F32)); err != nil {
			return err
		}
		T, E := logits.Rows(), logits.Cols()
		if err := firstErr(kernels.CheckShape(op, "ids", ids, T, p.TopK), kernels.CheckShape(op, "weights", weights, T, p.TopK)); err != nil {
			return err
		}
		if bias != nil {
			if err := firstErr(b.own(op, bias), kernels.CheckDType(op, "bias", bias, kernels.F32), kernels.CheckShape(op, "bias", bias, E)); err != nil {
				return err
			}
		}
		ng := max(p.NGroup, 1)
		if E > 2048 || ng > 64 || E%ng != 0 || p.TopK < 1 || p.TopK > 32 || p.TopK > E {
			return fmt.Errorf("%s: %d experts, %d groups, top-%d: %w", op, E, ng, p.TopK, kernels.ErrUnsupported)
		}
		tg := p.TopKGroup
		if tg <= 0 || tg > ng {
			tg = ng
		}
		var mask uintptr
		if allowed != nil {
			if len(allowed) != E {
				return fmt.Errorf("%s: allowed has %d entries for %d experts: %w", op, len(allowed), E, kernels.ErrShape)
			}
			m, err := b.uploadMask(allowed)
			if err != nil {
				return err
			}
			mask = m
		}
		norm := 0
		if p.Norm {
			norm = 1
		}
		a := b.args.reset().ptr(ptrOf(ids)).ptr(ptrOf(weights)).ptr(ptrOf(logits)).ptr(ptrOf(bias)).ptr(mask).
			i32(E).i32(ng).i32(tg).i32(p.TopK).i32(norm).f32(p.Scale)
		return b.launch("router", grid1(T), dim3{32, 1, 1}, 0, a)
	})
}

// uploadMask keeps the router's allowed mask on the device, uploading only when it changes.
func (b *Backend) uploadMask(allowed []bool) (uintptr, error) {
	h := make([]int32, len(allowed))
	for i, ok := range allowed {
		if ok {
			h[i] = 1
		}
	}
	if b.allowed != nil && slices.Equal(h, b.allowH) {
		return b.allowed.ptr, nil
	}
	if b.allowed == nil || b.allowed.size < 4*len(h) {
		s, err := b.scratchBuf("router.allowed", 4*len(h))
		if err != nil {
			return 0, err
		}
		b.allowed = s
	}
	if err := b.hostToDevice(b.allowed.ptr, unsafe.Pointer(&h[0]), 4*len(h)); err != nil {
		return 0, err
	}
	b.allowH = h
	return b.allowed.ptr, nil
}

// hostToDevice copies small host metadata: on the stream, or synchronously while capturing
// (pageable copies cannot be captured).
func (b *Backend) hostToDevice(dst uintptr, src unsafe.Pointer, n int) error {
	if b.capture != nil {
		return b.d.check("cuMemcpyHtoD", b.d.cuMemcpyHtoD(dst, src, uint64(n)))
	}
	return b.d.check("cuMemcpyHtoDAsync", b.d.cuMemcpyHtoDAsync(dst, src, uint64(n), b.stream))
}

// setTable is the device copy of an ExpertSet: per expert the GateUp and Down pointers.
type setTable struct {
	buf  *devBuf
	host []uint64
	H, I int
}

// expertTable validates set and returns its device pointer table, uploading it when it changed.
func (b *Backend) expertTable(op string, set *kernels.ExpertSet, H int) (*setTable, error) {
	if set == nil {
		return nil, fmt.Errorf("cuda: %s: expert set is nil: %w", op, kernels.ErrShape)
	}
	E := len(set.Experts)
	host := make([]uint64, 2*E)
	I := 0
	for e, x := range set.Experts {
		if x == nil {
			continue
		}
		if err := b.own(op, x.GateUp, x.Down); err != nil {
			return nil, fmt.Errorf("expert %d: %w", e, err)
		}
		if x.GateUp.DType != kernels.BF16 || x.Down.DType != kernels.BF16 {
			return nil, fmt.Errorf("cuda: %s: expert %d weights %v, %v (BF16 only): %w", op, e, x.GateUp, x.Down, kernels.ErrDType)
		}
		if I == 0 && len(x.Down.Shape) == 2 {
			I = x.Down.Shape[1]
		}
		if err := firstErr(kernels.CheckShape(op, "gate_up", x.GateUp, 2*I, H), kernels.CheckShape(op, "down", x.Down, H, I)); err != nil {
			return nil, fmt.Errorf("expert %d: %w", e, err)
		}
		host[2*e], host[2*e+1] = uint64(ptrOf(x.GateUp)), uint64(ptrOf(x.Down))
	}
	if I%8 != 0 || H%8 != 0 {
		return nil, fmt.Errorf("cuda: %s: hidden %d, intermediate %d (multiples of 8): %w", op, H, I, kernels.ErrUnsupported)
	}
	st := b.sets[set]
	if st != nil && slices.Equal(st.host, host) {
		return st, nil
	}
	if st == nil || st.buf.size < 8*len(host) {
		ptr, size, class, err := b.pool.get(max(8*len(host), 8))
		if err != nil {
			return nil, err
		}
		if st != nil {
			b.retired = append(b.retired, st.buf)
		}
		st = &setTable{buf: &devBuf{ptr: ptr, size: size, class: class, owner: b}}
		b.sets[set] = st
	}
	if len(host) > 0 {
		if err := b.hostToDevice(st.buf.ptr, unsafe.Pointer(&host[0]), 8*len(host)); err != nil {
			return nil, err
		}
	}
	st.host, st.H, st.I = host, H, I
	return st, nil
}

// expNT is EXP_NT of llada2.cu: tokens per pass over an expert's weight tile.
const expNT = 8

// ExpertsFFN implements kernels.Backend without a host round trip: route_group buckets the
// (token, choice) entries by expert on the device; expert_gateup and expert_down are gridded
// over (expert, output tile), each block looping over its expert's tokens, so every touched
// expert's weights are read once per 8 tokens (once at batch 1); expert_combine sums each
// token's choices in order.
func (b *Backend) ExpertsFFN(dst, x, ids, weights *kernels.Tensor, set *kernels.ExpertSet) error {
	const op = "experts ffn"
	return b.do(func() error {
		if err := firstErr(b.own(op, dst, x, ids, weights), kernels.CheckDType(op, "dst", dst, kernels.F32), kernels.CheckDType(op, "x", x, kernels.F32),
			kernels.CheckDType(op, "ids", ids, kernels.I32), kernels.CheckDType(op, "weights", weights, kernels.F32)); err != nil {
			return err
		}
		T, H := x.Rows(), x.Cols()
		k := ids.Cols()
		if err := firstErr(kernels.CheckShape(op, "dst", dst, T, H), kernels.CheckShape(op, "ids", ids, T, k), kernels.CheckShape(op, "weights", weights, T, k)); err != nil {
			return err
		}
		st, err := b.expertTable(op, set, H)
		if err != nil {
			return err
		}
		if a := set.ActDType; a != 0 && a != kernels.F32 && a != kernels.BF16 {
			return fmt.Errorf("cuda: %s: activation dtype %v (F32 or BF16): %w", op, a, kernels.ErrUnsupported)
		}
		E, I, N := len(set.Experts), st.I, T*k
		if T == 0 {
			return nil
		}
		if E == 0 || I == 0 || E > 4096 {
			return b.d.check("cuMemsetD8Async", b.d.cuMemsetD8Async(ptrOf(dst), 0, uint64(dst.Bytes()), b.stream))
		}
		meta, err := b.scratchBuf("experts.meta", 4*(E+1+N))
		if err != nil {
			return err
		}
		ys, err := b.scratchBuf("experts.ys", 4*N*H)
		if err != nil {
			return err
		}
		offsets, list := meta.ptr, meta.ptr+uintptr(4*(E+1))
		a := b.args.reset().ptr(offsets).ptr(list).ptr(ptrOf(ids)).ptr(st.buf.ptr).i32(N).i32(E)
		if err := b.launch("route_group", grid1(1), dim3{1024, 1, 1}, 8*E, a); err != nil {
			return err
		}
		if H%256 == 0 && I%128 == 0 {
			return b.expertsMMA(dst, x, ids, weights, st, offsets, list, ys.ptr, T, H, I, k, E, N, set.ActDType != kernels.BF16)
		}
		sm := 4 * expNT * H
		if err := b.allowSmem("expert_gateup", sm); err != nil {
			return err
		}
		act, err := b.scratchBuf("experts.act", 4*N*I)
		if err != nil {
			return err
		}
		a = b.args.reset().ptr(act.ptr).ptr(ptrOf(x)).ptr(offsets).ptr(list).ptr(st.buf.ptr).i32(H).i32(I).i32(k)
		if err := b.launch("expert_gateup", dim3{uint32(E), uint32((I + 15) / 16), 1}, dim3{256, 1, 1}, sm, a); err != nil {
			return err
		}
		sm = 4 * expNT * I
		if err := b.allowSmem("expert_down", sm); err != nil {
			return err
		}
		a = b.args.reset().ptr(ys.ptr).ptr(act.ptr).ptr(ptrOf(weights)).ptr(offsets).ptr(list).ptr(st.buf.ptr).i32(H).i32(I)
		if err := b.launch("expert_down", dim3{uint32(E), uint32((H + 31) / 32), 1}, dim3{256, 1, 1}, sm, a); err != nil {
			return err
		}
		return b.expertCombine(dst, ids, st, ys.ptr, T, H, k, E)
	})
}

// allowSmem raises a kernel's dynamic shared-memory limit past the default 48 KiB when needed.
func (b *Backend) allowSmem(name string, n int) error {
	if n <= 48<<10 {
		return nil
	}
	key := "smem." + name
	if b.smem == nil {
		b.smem = map[string]int{}
	}
	if b.smem[key] >= n {
		return nil
	}
	f, err := b.mod.fn(name)
	if err != nil {
		return err
	}
	if err := b.d.check("cuFuncSetAttribute", b.d.cuFuncSetAttribute(f, funcAttrMaxDynSmem, int32(n))); err != nil {
		return fmt.Errorf("cuda: %s needs %d bytes of shared memory: %w", name, n, err)
	}
	b.smem[key] = n
	return nil
}

// expertsMMA is ExpertsFFN on the tensor cores (H a multiple of 256, I of 128). Exact (float32
// activations): split_bf16 writes x as hi + lo bf16 terms, expert_gateup_mma (block: expert × 16
// i's, warps splitting H) writes the activations as hi + lo terms, and expert_down_mma (block:
// expert × 32 h's, warps splitting I) the weighted expert outputs. Otherwise (ExpertSet.ActDType
// BF16) cvt_f32 rounds x to bf16 and expert_gateup_mma1 / expert_down_mma1 multiply single bf16
// terms: half the MMAs and activation reads. expert_combine then sums each token's choices in
// order. Each touched expert's weights are read once per 32 of its entries (once at batch 1).
func (b *Backend) expertsMMA(dst, x, ids, weights *kernels.Tensor, st *setTable, offsets, list, ys uintptr, T, H, I, k, E, N int, exact bool) error {
	terms, suffix := 1, "1"
	if exact {
		terms, suffix = 2, ""
	}
	xs, err := b.scratchBuf("experts.x16", 2*terms*T*H)
	if err != nil {
		return err
	}
	as, err := b.scratchBuf("experts.act16", 2*terms*N*I)
	if err != nil {
		return err
	}
	xh, xl := xs.ptr, xs.ptr+uintptr(2*T*H) // xl, al: the lo terms, exact only
	ah, al := as.ptr, as.ptr+uintptr(2*N*I)
	if exact {
		a := b.args.reset().ptr(xh).ptr(xl).ptr(ptrOf(x)).u64(uint64(T * H))
		if err := b.launch("split_bf16", gridFor(T*H, 256), dim3{256, 1, 1}, 0, a); err != nil {
			return err
		}
	} else {
		a := b.args.reset().ptr(xh).ptr(ptrOf(x)).u64(uint64(T * H)).i32(int(kernels.BF16))
		if err := b.launch("cvt_f32", gridFor(T*H, 256), dim3{256, 1, 1}, 0, a); err != nil {
			return err
		}
	}
	a := b.args.reset().ptr(ah)
	if exact {
		a.ptr(al)
	}
	a.ptr(xh)
	if exact {
		a.ptr(xl)
	}
	a.ptr(offsets).ptr(list).ptr(st.buf.ptr).i32(H).i32(I).i32(k)
	if err := b.launch("expert_gateup_mma"+suffix, dim3{uint32(E), uint32(I / 16), 1}, dim3{256, 1, 1}, 0, a); err != nil {
		return err
	}
	a = b.args.reset().ptr(ys).ptr(ah)
	if exact {
		a.ptr(al)
	}
	a.ptr(ptrOf(weights)).ptr(offsets).ptr(list).ptr(st.buf.ptr).i32(H).i32(I)
	if err := b.launch("expert_down_mma"+suffix, dim3{uint32(E), uint32(H / 32), 1}, dim3{128, 1, 1}, 0, a); err != nil {
		return err
	}
	return b.expertCombine(dst, ids, st, ys, T, H, k, E)
}

// expertCombine launches expert_combine: dst[t,:] = Σ_j ys[t·k+j,:] over the held choices.
func (b *Backend) expertCombine(dst, ids *kernels.Tensor, st *setTable, ys uintptr, T, H, k, E int) error {
	a := b.args.reset().ptr(ptrOf(dst)).ptr(ys).ptr(ptrOf(ids)).ptr(st.buf.ptr).i32(H).i32(k).i32(E)
	return b.launch("expert_combine", grid1(T), dim3{256, 1, 1}, 0, a)
}
