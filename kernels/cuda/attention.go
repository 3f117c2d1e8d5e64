package cuda

import (
	"fmt"
	"math"
	"unsafe"

	"github.com/dlmesh/dlmesh/kernels"
)

// attnTileRows: query rows of one sequence per attention block (FA_QN / 4 of llada2.cu, so a
// block holds at most 64 query vectors with up to 4 q heads per kv head).
const attnTileRows = 16

// batchDev is Batch.Storage: the step metadata on the device, in one buffer.
type batchDev struct {
	buf     *devBuf
	pos     uintptr // b.Pos
	seqs    uintptr // int64[4·S]: cache pointer, capacity, Pos, Len
	rowSeq  uintptr // int32[Rows]
	tiles   uintptr // int32[3·nTiles]: seq, first row, rows
	nTiles  int
	cacheDT kernels.DType // F32 or BF16: the element type of every sequence's cache
	caps    []int         // per sequence: cache capacity (host copy for validation)
	layers  []int         // per sequence: cache layers
}

// NewCache implements kernels.Backend: a tensor [layers, 2, KVHeads, capLen, HeadDim] of
// p.CacheDType (F32 when zero, or BF16), zeroed.
func (b *Backend) NewCache(layers, capLen int, p kernels.AttnParams) (*kernels.Tensor, error) {
	if layers <= 0 || capLen <= 0 || p.KVHeads <= 0 || p.HeadDim <= 0 {
		return nil, fmt.Errorf("cuda: new cache: layers %d, capLen %d, %+v: %w", layers, capLen, p, kernels.ErrShape)
	}
	dt := p.CacheDType
	switch dt {
	case 0:
		dt = kernels.F32
	case kernels.F32, kernels.BF16:
	default:
		return nil, fmt.Errorf("cuda: new cache: %v cache: %w", p.CacheDType, kernels.ErrUnsupported)
	}
	return b.Alloc(dt, layers, 2, p.KVHeads, capLen, p.HeadDim)
}

// NewBatch implements kernels.Backend: positions, per-row sequence ids, sequence descriptors
// and attention tiles are uploaded once for the step.
func (b *Backend) NewBatch(seqs []kernels.Seq) (*kernels.Batch, error) {
	rows := 0
	for _, s := range seqs {
		rows += s.Len
	}
	pos := make([]int32, rows)
	rowSeq := make([]int32, rows)
	covered := make([]bool, rows)
	info := make([]int64, 4*len(seqs))
	var tiles []int32
	bd := &batchDev{caps: make([]int, len(seqs)), layers: make([]int, len(seqs))}
	for i, s := range seqs {
		if s.Len <= 0 || s.Row < 0 || s.Row+s.Len > rows || s.Pos < 0 {
			return nil, fmt.Errorf("cuda: new batch: seq %d rows [%d,%d) of %d, pos %d: %w", i, s.Row, s.Row+s.Len, rows, s.Pos, kernels.ErrShape)
		}
		if s.Cache == nil || len(s.Cache.Shape) != 5 || (s.Cache.DType != kernels.F32 && s.Cache.DType != kernels.BF16) {
			return nil, fmt.Errorf("cuda: new batch: seq %d cache %v: %w", i, s.Cache, kernels.ErrShape)
		}
		if i == 0 {
			bd.cacheDT = s.Cache.DType
		} else if s.Cache.DType != bd.cacheDT {
			return nil, fmt.Errorf("cuda: new batch: seq %d cache %v among %v caches: %w", i, s.Cache, bd.cacheDT, kernels.ErrDType)
		}
		cp := s.Cache.Shape[3]
		if s.Pos+s.Len > cp {
			return nil, fmt.Errorf("cuda: new batch: seq %d positions [%d,%d) past cache capacity %d: %w", i, s.Pos, s.Pos+s.Len, cp, kernels.ErrShape)
		}
		db, ok := s.Cache.Storage.(*devBuf)
		if !ok || db.owner != b {
			return nil, fmt.Errorf("cuda: new batch: seq %d cache: %w", i, kernels.ErrWrongOwner)
		}
		info[4*i], info[4*i+1], info[4*i+2], info[4*i+3] = int64(db.ptr), int64(cp), int64(s.Pos), int64(s.Len)
		bd.caps[i], bd.layers[i] = cp, s.Cache.Shape[0]
		for r := 0; r < s.Len; r++ {
			if covered[s.Row+r] {
				return nil, fmt.Errorf("cuda: new batch: row %d in two sequences: %w", s.Row+r, kernels.ErrShape)
			}
			covered[s.Row+r] = true
			pos[s.Row+r] = int32(s.Pos + r)
			rowSeq[s.Row+r] = int32(i)
		}
		for r := 0; r < s.Len; r += attnTileRows {
			tiles = append(tiles, int32(i), int32(s.Row+r), int32(min(attnTileRows, s.Len-r)))
		}
	}
	bd.nTiles = len(tiles) / 3
	var posT *kernels.Tensor
	err := b.do(func() error {
		var err error
		posT, err = b.newTensor(kernels.I32, []int{rows}, false)
		if err != nil {
			return err
		}
		n := len(info)*8 + (len(rowSeq)+len(tiles))*4
		ptr, size, class, err := b.pool.get(n)
		if err != nil {
			b.freeBuf(posT.Storage.(*devBuf))
			return err
		}
		bd.buf = &devBuf{ptr: ptr, size: size, class: class, owner: b}
		host := make([]byte, n)
		copy(host, unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(info))), len(info)*8))
		off := len(info) * 8
		copy(host[off:], unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(rowSeq))), len(rowSeq)*4))
		off2 := off + len(rowSeq)*4
		copy(host[off2:], unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(tiles))), len(tiles)*4))
		bd.seqs, bd.rowSeq, bd.tiles, bd.pos = ptr, ptr+uintptr(off), ptr+uintptr(off2), ptrOf(posT)
		if rows > 0 {
			if err := b.d.check("cuMemcpyHtoDAsync", b.d.cuMemcpyHtoDAsync(bd.pos, unsafe.Pointer(&pos[0]), uint64(rows*4), b.stream)); err != nil {
				return err
			}
		}
		return b.d.check("cuMemcpyHtoDAsync", b.d.cuMemcpyHtoDAsync(ptr, unsafe.Pointer(&host[0]), uint64(n), b.stream))
	})
	if err != nil {
		return nil, fmt.Errorf("cuda: new batch: %w", err)
	}
	return &kernels.Batch{Seqs: append([]kernels.Seq(nil), seqs...), Rows: rows, Pos: posT, Storage: bd}, nil
}

// FreeBatch implements kernels.Backend.
func (b *Backend) FreeBatch(batch *kernels.Batch) {
	if batch == nil {
		return
	}
	bd, ok := batch.Storage.(*batchDev)
	if !ok || bd.buf == nil || bd.buf.owner != b {
		return
	}
	b.do(func() error {
		b.freeBuf(bd.buf)
		if db, ok := batch.Pos.Storage.(*devBuf); ok {
			b.freeBuf(db)
		}
		return nil
	})
	batch.Storage = nil
}

// batchDev returns batch's device metadata (thread only).
func (b *Backend) batchDev(op string, batch *kernels.Batch) (*batchDev, error) {
	if batch == nil {
		return nil, fmt.Errorf("cuda: %s: batch is nil: %w", op, kernels.ErrShape)
	}
	bd, ok := batch.Storage.(*batchDev)
	if !ok || bd.buf == nil || bd.buf.owner != b {
		return nil, fmt.Errorf("cuda: %s: batch: %w", op, kernels.ErrWrongOwner)
	}
	if bd.buf.freed {
		return nil, fmt.Errorf("cuda: %s: batch: %w", op, kernels.ErrFreed)
	}
	return bd, nil
}

// Attention implements kernels.Backend: kv_write stores the step's k and v heads into the caches,
// then one block per (tile of ≤ 16 rows, group of ≤ 4 q heads of one kv head, key split) runs the
// block-causal online-softmax attention over its keys (flash_d64/flash_d128, every K/V tile shared
// by the group's heads), and attention_merge combines the splits when there are several. With
// BF16 caches kv_write_bf16 rounds k and v to bf16 and flash_bf16_d64/flash_bf16_d128 run the
// same blocks on tensor cores (bf16 q, K, P, V; fp32 accumulation and softmax).
func (b *Backend) Attention(out, qkv *kernels.Tensor, batch *kernels.Batch, layer int, p kernels.AttnParams) error {
	const op = "attention"
	return b.do(func() error {
		bd, err := b.batchDev(op, batch)
		if err != nil {
			return err
		}
		if err := firstErr(b.own(op, out, qkv), kernels.CheckDType(op, "out", out, kernels.F32), kernels.CheckDType(op, "qkv", qkv, kernels.F32),
			kernels.CheckShape(op, "qkv", qkv, batch.Rows, p.QKVCols()), kernels.CheckShape(op, "out", out, batch.Rows, p.Heads*p.HeadDim)); err != nil {
			return err
		}
		if p.KVHeads <= 0 || p.Heads%p.KVHeads != 0 || p.BlockLen <= 0 {
			return fmt.Errorf("%s: %d heads, %d kv heads, block %d: %w", op, p.Heads, p.KVHeads, p.BlockLen, kernels.ErrShape)
		}
		kern := ""
		switch p.HeadDim {
		case 64:
			kern = "flash_d64"
		case 128:
			kern = "flash_d128"
		default:
			return fmt.Errorf("%s: head dim %d (64 or 128): %w", op, p.HeadDim, kernels.ErrUnsupported)
		}
		bf := bd.cacheDT == kernels.BF16
		write, threads := "kv_write", 256
		if bf {
			kern, write, threads = "flash_bf16_"+kern[len("flash_"):], "kv_write_bf16", 128
		}
		for i, s := range batch.Seqs {
			if layer < 0 || layer >= bd.layers[i] || s.Cache.Shape[2] != p.KVHeads || s.Cache.Shape[4] != p.HeadDim {
				return fmt.Errorf("%s: layer %d of cache %v: %w", op, layer, s.Cache, kernels.ErrShape)
			}
		}
		a := b.args.reset().ptr(ptrOf(qkv)).ptr(bd.rowSeq).ptr(bd.seqs).ptr(bd.pos).i32(p.Heads).i32(p.KVHeads).i32(p.HeadDim).i32(layer)
		if err := b.launch(write, dim3{uint32(batch.Rows), uint32(p.KVHeads), 1}, dim3{uint32(threadsFor(p.HeadDim, 128)), 1, 1}, 0, a); err != nil {
			return err
		}
		scale := float32(1 / math.Sqrt(float64(p.HeadDim)))
		gb := attnHeadGroup(p.Heads / p.KVHeads)
		maxKeys := 0
		for _, s := range batch.Seqs {
			maxKeys = max(maxKeys, s.Pos+s.Len)
		}
		split, nz := attnSplit(bd.nTiles*(p.Heads/gb), maxKeys)
		var po, pml uintptr
		if nz > 1 {
			n := batch.Rows * p.Heads
			s, err := b.scratchBuf("attention.partials", 4*nz*n*(p.HeadDim+2))
			if err != nil {
				return err
			}
			po, pml = s.ptr, s.ptr+uintptr(4*nz*n*p.HeadDim)
		}
		D := p.HeadDim
		smem := 4 * (attnQN*(D+4) + attnKT*(D+4) + attnKT*D + attnQN*(attnKT+1))
		if bf {
			smem = 2 * 2 * 2 * attnBKT * (D + 8) // two stages of K and V tiles, bf16 rows padded by 8
		}
		if err := b.allowSmem(kern, smem); err != nil {
			return err
		}
		a = b.args.reset().ptr(ptrOf(out)).ptr(po).ptr(pml).ptr(ptrOf(qkv)).ptr(bd.tiles).ptr(bd.seqs).ptr(bd.pos).i32(p.Heads).i32(p.KVHeads).
			i32(gb).i32(layer).i32(p.BlockLen).f32(scale).i32(split).i32(batch.Rows)
		if err := b.launch(kern, dim3{uint32(bd.nTiles), uint32(p.Heads / gb), uint32(nz)}, dim3{uint32(threads), 1, 1}, smem, a); err != nil {
			return err
		}
		if nz == 1 {
			return nil
		}
		a = b.args.reset().ptr(ptrOf(out)).ptr(po).ptr(pml).i32(batch.Rows).i32(p.Heads).i32(D).i32(nz)
		return b.launch("attention_merge", dim3{uint32(batch.Rows), uint32(p.Heads), 1}, dim3{uint32(D), 1, 1}, 0, a)
	})
}

// FA_QN and FA_KT of llada2.cu: query vectors per block, keys per tile.
const attnQN, attnKT = 64, 32

// FB_KT of llada2.cu: keys per tile of flash_bf16_d64/flash_bf16_d128 (attnSplit's splits are
// multiples of it).
const attnBKT = 64

// attnHeadGroup: q heads of one kv group per block (4, 2 or 1; tiles of 16 rows × ≤ 4 heads).
func attnHeadGroup(g int) int {
	switch {
	case g%4 == 0:
		return 4
	case g%2 == 0:
		return 2
	}
	return 1
}

// attnSplit picks the keys per block (a multiple of the 32-key tile, at least 64) and the number
// of splits: as many splits as keep the grid near 1024 blocks, so short batches still fill the GPU.
func attnSplit(blocks, maxKeys int) (split, nz int) {
	split = 2 * attnKT
	for blocks*((maxKeys+split-1)/split) > 1024 && split < maxKeys {
		split *= 2
	}
	return split, max(1, (maxKeys+split-1)/split)
}
