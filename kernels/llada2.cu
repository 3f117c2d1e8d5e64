// llada2.cu — device code of the dlmesh CUDA backend (kernels/cuda) for llada2_moe.
//
// Compiled to PTX for sm_90 and embedded (kernels/cuda/ptx/llada2.ptx); regenerate with
//   bash kernels/cuda/gen.sh
// No CUDA headers are used: bf16/f16 are handled as raw 16-bit patterns, so any nvcc ≥ 11.8 works.
// Every kernel states the unfused reference math it computes (kernels/kernels.go has the op docs).
// Weight dtype codes follow kernels.DType: 1 F32, 2 BF16, 3 F16, 4 I32.

#define INF __int_as_float(0x7f800000)

__device__ __forceinline__ float bf2f(unsigned short h) { return __uint_as_float(((unsigned)h) << 16); }

__device__ __forceinline__ unsigned short f2bf(float f) {  // round to nearest even, NaN stays NaN
  unsigned u = __float_as_uint(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((u >> 16) | 0x40);
  return (unsigned short)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

__device__ __forceinline__ float h2f(unsigned short h) {
  float f;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
  return f;
}

__device__ __forceinline__ unsigned short f2h(float f) {
  unsigned short h;
  asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
  return h;
}

// ldw reads element i of a weight vector of dtype dt as float.
__device__ __forceinline__ float ldw(const void* w, int dt, long long i) {
  if (dt == 2) return bf2f(((const unsigned short*)w)[i]);
  if (dt == 3) return h2f(((const unsigned short*)w)[i]);
  return ((const float*)w)[i];
}

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// block_sum: every thread gets the sum over the block (blockDim.x a multiple of 32, ≤ 1024).
__device__ float block_sum(float v) {
  __shared__ float part[32];
  int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();
  if (lane == 0) part[w] = v;
  __syncthreads();
  v = lane < nw ? part[lane] : 0.f;
  return warp_sum(v);
}

// better reports whether (v, i) ranks before (bv, bi): larger value, ties to the lower id.
__device__ __forceinline__ bool better(float v, int i, float bv, int bi) {
  return v > bv || (v == bv && i >= 0 && (bi < 0 || i < bi));
}

// warp_best reduces (v, i) to the best pair of the warp (see better).
__device__ __forceinline__ void warp_best(float& v, int& i) {
  for (int o = 16; o > 0; o >>= 1) {
    float ov = __shfl_xor_sync(0xffffffffu, v, o);
    int oi = __shfl_xor_sync(0xffffffffu, i, o);
    if (better(ov, oi, v, i)) { v = ov; i = oi; }
  }
}

// block_best: every thread gets the best pair of the block.
__device__ void block_best(float& v, int& i) {
  __shared__ float bv[32];
  __shared__ int bi[32];
  int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
  warp_best(v, i);
  __syncthreads();
  if (lane == 0) { bv[w] = v; bi[w] = i; }
  __syncthreads();
  v = lane < nw ? bv[lane] : -INF;
  i = lane < nw ? bi[lane] : -1;
  warp_best(v, i);
}

// after reports whether (v, i) ranks strictly after (pv, pi) (the previous pick of a top-k).
__device__ __forceinline__ bool after(float v, int i, float pv, int pi) {
  return v < pv || (v == pv && i > pi);
}

extern "C" {

// embed: dst[t,:] = float(table[ids[t],:]); ids outside [0,V) give zero rows.
__global__ void embed(float* dst, const void* table, int dt, const int* ids, int T, int H, int V) {
  int t = blockIdx.x;
  int id = ids[t];
  for (int c = threadIdx.x; c < H; c += blockDim.x)
    dst[(long long)t * H + c] = (id >= 0 && id < V) ? ldw(table, dt, (long long)id * H + c) : 0.f;
}

// rmsnorm: dst[r,:] = w ⊙ x[r,:] / sqrt(mean(x[r,:]²) + eps), rows of width n (dst may be x).
__global__ void rmsnorm(float* dst, const float* x, const void* w, int wdt, int n, float eps) {
  long long base = (long long)blockIdx.x * n;
  float ss = 0.f;
  for (int c = threadIdx.x; c < n; c += blockDim.x) {
    float v = x[base + c];
    ss += v * v;
  }
  ss = block_sum(ss);
  float r = rsqrtf(ss / (float)n + eps);
  for (int c = threadIdx.x; c < n; c += blockDim.x) dst[base + c] = ldw(w, wdt, c) * (x[base + c] * r);
}

// qknorm_rope: in place on packed qkv [T, (H+2KV)·D], one block of D threads per (row, head) of
// the H q heads and KV k heads: RMSNorm with qw/kw (when norm), then on the first rd dims
// x' = x·cos(p·f) + rotate_half(x)·sin(p·f), f_i = 1/theta^(2i/rd) in float32 (as torch computes it).
__global__ void qknorm_rope(float* qkv, const void* qw, const void* kw, int wdt, const int* pos, int H, int KV,
                            int D, int rd, float theta, float eps, int norm) {
  __shared__ float buf[1024];
  int t = blockIdx.x, hh = blockIdx.y, d = threadIdx.x;
  long long off = ((long long)t * (H + 2 * KV) + hh) * D + d;
  float x = qkv[off];
  if (norm) {
    float ss = block_sum(x * x);
    x = ldw(hh < H ? qw : kw, wdt, d) * (x * rsqrtf(ss / (float)D + eps));
  }
  buf[d] = x;
  __syncthreads();
  if (d < rd) {
    int half = rd / 2, i = d % half;
    float inv = 1.0f / powf(theta, (float)(2 * i) / (float)rd);
    float ang = (float)pos[t] * inv;
    float s, c;
    sincosf(ang, &s, &c);
    float rot = d < half ? -buf[d + half] : buf[d - half];
    x = x * c + rot * s;
  }
  qkv[off] = x;
}

// Sequence metadata of a step (uploaded by NewBatch): per sequence 4 int64
// {cache pointer, cache capacity, Pos, Len}; per row its sequence; attention tiles of ≤ 16
// rows of one sequence as int3 {seq, first row, rows}.

}  // extern "C"

__device__ __forceinline__ void kv_store(float* c, long long i, float v) { c[i] = v; }
__device__ __forceinline__ void kv_store(unsigned short* c, long long i, float v) { c[i] = f2bf(v); }

// kv_rows: the body of kv_write (T float) and kv_write_bf16 (T unsigned short, bf16).
template <typename T>
__device__ __forceinline__ void kv_rows(const float* qkv, const int* rowSeq, const long long* seqs, const int* pos, int H,
                                        int KV, int D, int layer) {
  int t = blockIdx.x, kh = blockIdx.y;
  int s = rowSeq[t];
  T* cache = (T*)seqs[4 * s];
  long long cap = seqs[4 * s + 1];
  long long p = pos[t];
  if (p < 0 || p >= cap) return;
  long long qc = (long long)(H + 2 * KV) * D;
  long long kdst = (((long long)layer * 2 * KV + kh) * cap + p) * D;
  long long vdst = (((long long)(layer * 2 + 1) * KV + kh) * cap + p) * D;
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    kv_store(cache, kdst + d, qkv[t * qc + (long long)(H + kh) * D + d]);
    kv_store(cache, vdst + d, qkv[t * qc + (long long)(H + KV + kh) * D + d]);
  }
}

extern "C" {

// kv_write: cache[layer, 0, kh, pos[t], :] = k head kh of row t; likewise v (cache [L,2,KV,cap,D]).
__global__ void kv_write(const float* qkv, const int* rowSeq, const long long* seqs, const int* pos, int H, int KV,
                         int D, int layer) {
  kv_rows<float>(qkv, rowSeq, seqs, pos, H, KV, D, layer);
}

// kv_write_bf16: kv_write into a BF16 cache; k and v are rounded to bf16 (nearest even).
__global__ void kv_write_bf16(const float* qkv, const int* rowSeq, const long long* seqs, const int* pos, int H,
                              int KV, int D, int layer) {
  kv_rows<unsigned short>(qkv, rowSeq, seqs, pos, H, KV, D, layer);
}

}  // extern "C"

// ---- split-key attention (flash-decoding) ----
// Block (tile of ≤ 16 rows of one sequence, group of GB q heads sharing one kv head, key
// split z): the block's FA_QN = 64 query vectors (row-major over (row, head)) share every K/V
// tile it loads; it covers keys [z·split, min((z+1)·split, kmax)) with an online softmax in fp32
// and writes, when the grid has one split, out = Σ p·V / Σ p, else its unnormalised Σ p·V and
// (max, Σ p) for attention_merge. 256 threads: thread (qg = tid/16, kg = tid%16) scores queries
// 4qg..4qg+3 against keys kg and kg+16 of a 32-key tile, then accumulates those queries' outputs
// over dims 4kg..4kg+3 (+64 for D = 128). K/V tiles are prefetched into registers one tile ahead.

#define FA_QN 64
#define FA_KT 32

template <int D>
__device__ __forceinline__ void flash_impl(float* out, float* po, float* pml, const float* qkv, const int* tiles,
                                           const long long* seqs, const int* pos, int H, int KV, int GB, int layer,
                                           int blockLen, float scale, int split, int rows) {
  constexpr int QS = D + 4;        // padded row of q and k
  constexpr int NV = D / 32;       // float4s of K (and of V) per thread per tile
  constexpr int DV = D / 64;       // float4 output columns per thread
  extern __shared__ float smf[];
  float* qs = smf;                 // [FA_QN][QS]
  float* ks = qs + FA_QN * QS;     // [FA_KT][QS]
  float* vs = ks + FA_KT * QS;     // [FA_KT][D]
  float* ps = vs + FA_KT * D;      // [FA_QN][FA_KT + 1]
  int s = tiles[3 * blockIdx.x], r0 = tiles[3 * blockIdx.x + 1], n = tiles[3 * blockIdx.x + 2];
  int hb = blockIdx.y, z = blockIdx.z;
  int G = H / KV, kh = hb * GB / G;
  const float* cache = (const float*)seqs[4 * s];
  long long cap = seqs[4 * s + 1];
  long long P0 = seqs[4 * s + 2], L = seqs[4 * s + 3];
  long long qc = (long long)(H + 2 * KV) * D;
  int tid = threadIdx.x, qg = tid >> 4, kg = tid & 15;
  for (int i = tid; i < FA_QN * D / 4; i += blockDim.x) {
    int qi = i / (D / 4), d4 = i % (D / 4);
    int row = qi / GB, hl = qi % GB;
    float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
    if (row < n) {
      v = *(const float4*)(qkv + (r0 + row) * qc + (long long)(hb * GB + hl) * D + 4 * d4);
      v.x *= scale; v.y *= scale; v.z *= scale; v.w *= scale;
    }
    *(float4*)(qs + qi * QS + 4 * d4) = v;
  }
  int lim[4];
  float m[4], l[4], o[4][DV][4];
#pragma unroll
  for (int a = 0; a < 4; a++) {
    int row = (4 * qg + a) / GB;
    long long p = row < n ? pos[r0 + row] : 0;
    long long bl = (p / blockLen + 1) * blockLen;
    lim[a] = row < n ? (int)(bl < P0 + L ? bl : P0 + L) : 0;
    m[a] = -INF;
    l[a] = 0.f;
#pragma unroll
    for (int v = 0; v < DV; v++)
#pragma unroll
      for (int e = 0; e < 4; e++) o[a][v][e] = 0.f;
  }
  long long plast = pos[r0 + n - 1];
  long long kmax = (plast / blockLen + 1) * blockLen;
  if (kmax > P0 + L) kmax = P0 + L;
  if (kmax > cap) kmax = cap;
  long long kb = (long long)z * split, ke = kb + split;
  if (ke > kmax) ke = kmax;
  const float* K = cache + ((long long)layer * 2 * KV + kh) * cap * D;
  const float* V = cache + ((long long)(layer * 2 + 1) * KV + kh) * cap * D;
  float4 kr[NV], vr[NV];
  auto fetch = [&](long long j0) {
#pragma unroll
    for (int u = 0; u < NV; u++) {
      int i = tid + u * 256, j = i / (D / 4), d4 = i % (D / 4);
      bool ok = j0 + j < ke;
      kr[u] = ok ? *(const float4*)(K + (j0 + j) * D + 4 * d4) : make_float4(0.f, 0.f, 0.f, 0.f);
      vr[u] = ok ? *(const float4*)(V + (j0 + j) * D + 4 * d4) : make_float4(0.f, 0.f, 0.f, 0.f);
    }
  };
  if (kb < ke) fetch(kb);
  for (long long j0 = kb; j0 < ke; j0 += FA_KT) {
    __syncthreads();  // the previous tile's readers are done
#pragma unroll
    for (int u = 0; u < NV; u++) {
      int i = tid + u * 256, j = i / (D / 4), d4 = i % (D / 4);
      *(float4*)(ks + j * QS + 4 * d4) = kr[u];
      *(float4*)(vs + j * D + 4 * d4) = vr[u];
    }
    __syncthreads();
    if (j0 + FA_KT < ke) fetch(j0 + FA_KT);
    float sc[4][2];
#pragma unroll
    for (int a = 0; a < 4; a++) sc[a][0] = sc[a][1] = 0.f;
#pragma unroll 8
    for (int d = 0; d < D; d += 4) {
      float4 k0 = *(const float4*)(ks + kg * QS + d), k1 = *(const float4*)(ks + (kg + 16) * QS + d);
#pragma unroll
      for (int a = 0; a < 4; a++) {
        float4 q = *(const float4*)(qs + (4 * qg + a) * QS + d);
        sc[a][0] += q.x * k0.x + q.y * k0.y + q.z * k0.z + q.w * k0.w;
        sc[a][1] += q.x * k1.x + q.y * k1.y + q.z * k1.z + q.w * k1.w;
      }
    }
#pragma unroll
    for (int a = 0; a < 4; a++) {
      if (j0 + kg >= lim[a]) sc[a][0] = -INF;
      if (j0 + kg + 16 >= lim[a]) sc[a][1] = -INF;
      float mt = fmaxf(sc[a][0], sc[a][1]);
#pragma unroll
      for (int off = 8; off > 0; off >>= 1) mt = fmaxf(mt, __shfl_xor_sync(0xffffffffu, mt, off));
      float mn = fmaxf(m[a], mt);
      float corr = 1.f, p0 = 0.f, p1 = 0.f;
      if (mn > -INF) {
        corr = expf(m[a] - mn);
        p0 = expf(sc[a][0] - mn);
        p1 = expf(sc[a][1] - mn);
      }
      float ls = p0 + p1;
#pragma unroll
      for (int off = 8; off > 0; off >>= 1) ls += __shfl_xor_sync(0xffffffffu, ls, off);
      l[a] = l[a] * corr + ls;
      m[a] = mn;
#pragma unroll
      for (int v = 0; v < DV; v++)
#pragma unroll
        for (int e = 0; e < 4; e++) o[a][v][e] *= corr;
      ps[(4 * qg + a) * (FA_KT + 1) + kg] = p0;
      ps[(4 * qg + a) * (FA_KT + 1) + kg + 16] = p1;
    }
    __syncthreads();
#pragma unroll 4
    for (int j = 0; j < FA_KT; j++) {
      float pa[4];
#pragma unroll
      for (int a = 0; a < 4; a++) pa[a] = ps[(4 * qg + a) * (FA_KT + 1) + j];
#pragma unroll
      for (int v = 0; v < DV; v++) {
        float4 x = *(const float4*)(vs + j * D + v * 64 + 4 * kg);
#pragma unroll
        for (int a = 0; a < 4; a++) {
          o[a][v][0] += pa[a] * x.x;
          o[a][v][1] += pa[a] * x.y;
          o[a][v][2] += pa[a] * x.z;
          o[a][v][3] += pa[a] * x.w;
        }
      }
    }
  }
  bool final = gridDim.z == 1;
#pragma unroll
  for (int a = 0; a < 4; a++) {
    int qi = 4 * qg + a, row = qi / GB;
    if (row >= n) continue;
    long long rh = (long long)(r0 + row) * H + hb * GB + qi % GB;
    float inv = final ? 1.f / l[a] : 1.f;
    float* dst = final ? out + rh * D : po + ((long long)z * rows * H + rh) * D;
#pragma unroll
    for (int v = 0; v < DV; v++)
      *(float4*)(dst + v * 64 + 4 * kg) = make_float4(o[a][v][0] * inv, o[a][v][1] * inv, o[a][v][2] * inv, o[a][v][3] * inv);
    if (!final && kg == 0) {
      pml[2 * ((long long)z * rows * H + rh)] = m[a];
      pml[2 * ((long long)z * rows * H + rh) + 1] = l[a];
    }
  }
}

extern "C" {

__global__ void __launch_bounds__(256, 2) flash_d128(float* out, float* po, float* pml, const float* qkv, const int* tiles,
                                                  const long long* seqs, const int* pos, int H, int KV, int GB,
                                                  int layer, int blockLen, float scale, int split, int rows) {
  flash_impl<128>(out, po, pml, qkv, tiles, seqs, pos, H, KV, GB, layer, blockLen, scale, split, rows);
}

__global__ void __launch_bounds__(256) flash_d64(float* out, float* po, float* pml, const float* qkv, const int* tiles,
                                                 const long long* seqs, const int* pos, int H, int KV, int GB,
                                                 int layer, int blockLen, float scale, int split, int rows) {
  flash_impl<64>(out, po, pml, qkv, tiles, seqs, pos, H, KV, GB, layer, blockLen, scale, split, rows);
}

// attention_merge: block (row, head), D threads: out = Σ_z e^(m_z−M)·O_z / Σ_z e^(m_z−M)·l_z over
// the nz splits' partials (splits past a row's keys have m = −inf and add nothing).
__global__ void attention_merge(float* out, const float* po, const float* pml, int rows, int H, int D, int nz) {
  long long rh = (long long)blockIdx.x * H + blockIdx.y;
  int d = threadIdx.x;
  float M = -INF;
  for (int z = 0; z < nz; z++) M = fmaxf(M, pml[2 * ((long long)z * rows * H + rh)]);
  float L = 0.f, acc = 0.f;
  for (int z = 0; z < nz; z++) {
    long long i = (long long)z * rows * H + rh;
    float mz = pml[2 * i];
    if (mz == -INF) continue;
    float f = expf(mz - M);
    L += f * pml[2 * i + 1];
    acc += f * po[i * D + d];
  }
  out[rh * D + d] = acc / L;
}

}  // extern "C"

// ---- split-key attention over a BF16 cache, on tensor cores ----
// Same blocks as flash_d64/flash_d128 (tile of ≤ 16 rows, GB q heads of one kv head, key split
// z; FA_QN = 64 query vectors), 128 threads: warp w owns query vectors 16w..16w+15 as the m16
// rows of mma.sync m16n8k16 (bf16 in, fp32 accumulate). q·scale·log2(e) is rounded to bf16 and
// held in registers as A fragments; FB_KT = 64-key K/V tiles are double-buffered in shared
// memory with cp.async (rows padded by 8 bf16, so ldmatrix is conflict-free); S = Q·Kᵀ stays in
// registers, the online softmax runs in the exp2 domain in fp32 (row max/sum over the lane quad),
// and P is rounded to bf16 and reused in registers as the A fragments of O += P·V (V through
// ldmatrix.trans). l sums the fp32 p. Partials for attention_merge carry m in natural-log units.

#define FB_KT 64

__device__ __forceinline__ unsigned pack_bf16(float lo, float hi) {
  unsigned r;
  asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
  return r;
}

__device__ __forceinline__ unsigned smem_u32(const void* p) {
  unsigned r;
  asm("{ .reg .u64 a; cvta.to.shared.u64 a, %1; cvt.u32.u64 %0, a; }" : "=r"(r) : "l"(p));
  return r;
}

__device__ __forceinline__ void cp_async16(void* dst, const void* src, int bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(smem_u32(dst)), "l"(src), "r"(bytes));
}

__device__ __forceinline__ void ldsm_x4(unsigned& r0, unsigned& r1, unsigned& r2, unsigned& r3, const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
               : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
               : "r"(smem_u32(p)));
}

__device__ __forceinline__ void ldsm_x4_t(unsigned& r0, unsigned& r1, unsigned& r2, unsigned& r3, const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
               : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
               : "r"(smem_u32(p)));
}

__device__ __forceinline__ void mma16816(float* d, const unsigned* a, unsigned b0, unsigned b1) {
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

template <int D>
__device__ __forceinline__ void flash_bf16_impl(float* out, float* po, float* pml, const float* qkv, const int* tiles,
                                                const long long* seqs, const int* pos, int H, int KV, int GB,
                                                int layer, int blockLen, float scale, int split, int rows) {
  constexpr int RS = D + 8;  // padded shared row (bf16)
  constexpr int KS = D / 16;  // k-steps of Q·Kᵀ
  constexpr int NT = D / 8;   // n-tiles of O
  constexpr int ST = FB_KT / 8;  // n-tiles of S
  extern __shared__ uint4 smq[];
  unsigned short* sm = (unsigned short*)smq;  // [2 stages][K, V][FB_KT][RS]
  int s = tiles[3 * blockIdx.x], r0 = tiles[3 * blockIdx.x + 1], n = tiles[3 * blockIdx.x + 2];
  int hb = blockIdx.y, z = blockIdx.z;
  int G = H / KV, kh = hb * GB / G;
  const unsigned short* cache = (const unsigned short*)seqs[4 * s];
  long long cap = seqs[4 * s + 1];
  long long P0 = seqs[4 * s + 2], L = seqs[4 * s + 3];
  long long qc = (long long)(H + 2 * KV) * D;
  int tid = threadIdx.x, w = tid >> 5, lane = tid & 31, g = lane >> 2, c = lane & 3;
  int qa = 16 * w + g, qb = qa + 8, rowa = qa / GB, rowb = qb / GB;
  bool va = rowa < n, vb = rowb < n;
  const float* qpa = qkv + (long long)(r0 + (va ? rowa : 0)) * qc + (long long)(hb * GB + qa % GB) * D;
  const float* qpb = qkv + (long long)(r0 + (vb ? rowb : 0)) * qc + (long long)(hb * GB + qb % GB) * D;
  float qs = scale * 1.4426950408889634f;
  unsigned qf[KS][4];
#pragma unroll
  for (int k = 0; k < KS; k++) {
    float2 x0 = va ? *(const float2*)(qpa + 16 * k + 2 * c) : make_float2(0.f, 0.f);
    float2 x1 = vb ? *(const float2*)(qpb + 16 * k + 2 * c) : make_float2(0.f, 0.f);
    float2 x2 = va ? *(const float2*)(qpa + 16 * k + 2 * c + 8) : make_float2(0.f, 0.f);
    float2 x3 = vb ? *(const float2*)(qpb + 16 * k + 2 * c + 8) : make_float2(0.f, 0.f);
    qf[k][0] = pack_bf16(x0.x * qs, x0.y * qs);
    qf[k][1] = pack_bf16(x1.x * qs, x1.y * qs);
    qf[k][2] = pack_bf16(x2.x * qs, x2.y * qs);
    qf[k][3] = pack_bf16(x3.x * qs, x3.y * qs);
  }
  long long plast = pos[r0 + n - 1];
  long long kmax = (plast / blockLen + 1) * blockLen;
  if (kmax > P0 + L) kmax = P0 + L;
  if (kmax > cap) kmax = cap;
  long long kb = (long long)z * split, ke = kb + split;
  if (ke > kmax) ke = kmax;
  long long la = 0, lb = 0;
  if (va) {
    long long bl = (pos[r0 + rowa] / blockLen + 1) * blockLen;
    la = bl < P0 + L ? bl : P0 + L;
  }
  if (vb) {
    long long bl = (pos[r0 + rowb] / blockLen + 1) * blockLen;
    lb = bl < P0 + L ? bl : P0 + L;
  }
  if (la > ke) la = ke;
  if (lb > ke) lb = ke;
  const unsigned short* K = cache + ((long long)layer * 2 * KV + kh) * cap * D;
  const unsigned short* V = cache + ((long long)(layer * 2 + 1) * KV + kh) * cap * D;
  auto load = [&](int stage, long long j0) {
    unsigned short* ks = sm + stage * 2 * FB_KT * RS;
    unsigned short* vs = ks + FB_KT * RS;
#pragma unroll
    for (int i = tid; i < FB_KT * D / 8; i += 128) {
      int j = i / (D / 8), d8 = i % (D / 8);
      bool ok = j0 + j < ke;
      long long off = ok ? (j0 + j) * D + 8 * d8 : 0;
      cp_async16(ks + j * RS + 8 * d8, K + off, ok ? 16 : 0);
      cp_async16(vs + j * RS + 8 * d8, V + off, ok ? 16 : 0);
    }
    asm volatile("cp.async.commit_group;");
  };
  float ma = -INF, mb = -INF, sa = 0.f, sb = 0.f, o[NT][4];
#pragma unroll
  for (int t = 0; t < NT; t++) o[t][0] = o[t][1] = o[t][2] = o[t][3] = 0.f;
  int nt = kb < ke ? (int)((ke - kb + FB_KT - 1) / FB_KT) : 0;
  if (nt > 0) load(0, kb);
  for (int it = 0; it < nt; it++) {
    long long j0 = kb + (long long)it * FB_KT;
    if (it + 1 < nt) {
      load((it + 1) & 1, j0 + FB_KT);
      asm volatile("cp.async.wait_group 1;");
    } else {
      asm volatile("cp.async.wait_group 0;");
    }
    __syncthreads();
    const unsigned short* ks = sm + (it & 1) * 2 * FB_KT * RS;
    const unsigned short* vs = ks + FB_KT * RS;
    float sc[ST][4];
#pragma unroll
    for (int t = 0; t < ST; t++) sc[t][0] = sc[t][1] = sc[t][2] = sc[t][3] = 0.f;
#pragma unroll
    for (int k = 0; k < KS; k += 2) {
#pragma unroll
      for (int t = 0; t < ST; t++) {
        unsigned b0, b1, b2, b3;
        ldsm_x4(b0, b1, b2, b3, ks + (8 * t + (lane & 7)) * RS + 16 * k + 8 * (lane >> 3));
        mma16816(sc[t], qf[k], b0, b1);
        mma16816(sc[t], qf[k + 1], b2, b3);
      }
    }
    float xa = -INF, xb = -INF;
#pragma unroll
    for (int t = 0; t < ST; t++)
#pragma unroll
      for (int e = 0; e < 2; e++) {
        long long key = j0 + 8 * t + 2 * c + e;
        if (key >= la) sc[t][e] = -INF;
        if (key >= lb) sc[t][2 + e] = -INF;
        xa = fmaxf(xa, sc[t][e]);
        xb = fmaxf(xb, sc[t][2 + e]);
      }
    xa = fmaxf(xa, __shfl_xor_sync(0xffffffffu, xa, 1));
    xa = fmaxf(xa, __shfl_xor_sync(0xffffffffu, xa, 2));
    xb = fmaxf(xb, __shfl_xor_sync(0xffffffffu, xb, 1));
    xb = fmaxf(xb, __shfl_xor_sync(0xffffffffu, xb, 2));
    float na = fmaxf(ma, xa), nb = fmaxf(mb, xb);
    float ba = na == -INF ? 0.f : na, bb = nb == -INF ? 0.f : nb;
    float ca = exp2f(ma - ba), cb = exp2f(mb - bb);
    ma = na;
    mb = nb;
    sa *= ca;
    sb *= cb;
#pragma unroll
    for (int t = 0; t < NT; t++) {
      o[t][0] *= ca;
      o[t][1] *= ca;
      o[t][2] *= cb;
      o[t][3] *= cb;
    }
#pragma unroll
    for (int t = 0; t < ST; t++) {
      sc[t][0] = exp2f(sc[t][0] - ba);
      sc[t][1] = exp2f(sc[t][1] - ba);
      sc[t][2] = exp2f(sc[t][2] - bb);
      sc[t][3] = exp2f(sc[t][3] - bb);
      sa += sc[t][0] + sc[t][1];
      sb += sc[t][2] + sc[t][3];
    }
#pragma unroll
    for (int kk = 0; kk < FB_KT / 16; kk++) {
      unsigned pa[4];
      pa[0] = pack_bf16(sc[2 * kk][0], sc[2 * kk][1]);
      pa[1] = pack_bf16(sc[2 * kk][2], sc[2 * kk][3]);
      pa[2] = pack_bf16(sc[2 * kk + 1][0], sc[2 * kk + 1][1]);
      pa[3] = pack_bf16(sc[2 * kk + 1][2], sc[2 * kk + 1][3]);
#pragma unroll
      for (int t = 0; t < NT; t += 2) {
        unsigned b0, b1, b2, b3;
        ldsm_x4_t(b0, b1, b2, b3, vs + (16 * kk + (lane & 7) + 8 * ((lane >> 3) & 1)) * RS + 8 * t + 8 * (lane >> 4));
        mma16816(o[t], pa, b0, b1);
        mma16816(o[t + 1], pa, b2, b3);
      }
    }
    __syncthreads();  // this stage's readers are done before the next load overwrites it
  }
  sa += __shfl_xor_sync(0xffffffffu, sa, 1);
  sa += __shfl_xor_sync(0xffffffffu, sa, 2);
  sb += __shfl_xor_sync(0xffffffffu, sb, 1);
  sb += __shfl_xor_sync(0xffffffffu, sb, 2);
  bool final = gridDim.z == 1;
#pragma unroll
  for (int h = 0; h < 2; h++) {
    int qi = h ? qb : qa, row = h ? rowb : rowa;
    if (row >= n) continue;
    float m = h ? mb : ma, l = h ? sb : sa;
    long long rh = (long long)(r0 + row) * H + hb * GB + qi % GB;
    float inv = final ? 1.f / l : 1.f;
    float* dst = final ? out + rh * D : po + ((long long)z * rows * H + rh) * D;
#pragma unroll
    for (int t = 0; t < NT; t++)
      *(float2*)(dst + 8 * t + 2 * c) = make_float2(o[t][2 * h] * inv, o[t][2 * h + 1] * inv);
    if (!final && c == 0) {
      pml[2 * ((long long)z * rows * H + rh)] = m == -INF ? -INF : m * 0.6931471805599453f;
      pml[2 * ((long long)z * rows * H + rh) + 1] = l;
    }
  }
}

extern "C" {

__global__ void __launch_bounds__(128, 3) flash_bf16_d128(float* out, float* po, float* pml, const float* qkv,
                                                       const int* tiles, const long long* seqs, const int* pos, int H,
                                                       int KV, int GB, int layer, int blockLen, float scale, int split,
                                                       int rows) {
  flash_bf16_impl<128>(out, po, pml, qkv, tiles, seqs, pos, H, KV, GB, layer, blockLen, scale, split, rows);
}

__global__ void __launch_bounds__(128, 3) flash_bf16_d64(float* out, float* po, float* pml, const float* qkv,
                                                      const int* tiles, const long long* seqs, const int* pos, int H,
                                                      int KV, int GB, int layer, int blockLen, float scale, int split,
                                                      int rows) {
  flash_bf16_impl<64>(out, po, pml, qkv, tiles, seqs, pos, H, KV, GB, layer, blockLen, scale, split, rows);
}

__device__ __forceinline__ float silu(float x) { return x / (1.f + expf(-x)); }

// swiglu: dst[t,i] = silu(gu[t,i])·gu[t,I+i].
__global__ void swiglu(float* dst, const float* gu, int T, int I) {
  long long n = (long long)T * I;
  for (long long k = blockIdx.x * (long long)blockDim.x + threadIdx.x; k < n; k += (long long)gridDim.x * blockDim.x) {
    long long t = k / I, i = k % I;
    dst[k] = silu(gu[t * 2 * I + i]) * gu[t * 2 * I + I + i];
  }
}

// add: dst += x.
__global__ void add(float* dst, const float* x, long long n) {
  for (long long k = blockIdx.x * (long long)blockDim.x + threadIdx.x; k < n; k += (long long)gridDim.x * blockDim.x)
    dst[k] += x[k];
}

// router: one warp per token. s = sigmoid(logits); r = s + bias (experts masked out by allowed:
// -inf); groups of E/NG experts score the sum of their top-2 r; the TG best groups are kept
// (ties to the lower group); the K best r among them are chosen, descending, ties to the lower
// id (fewer than K finite: the rest get id -1, weight 0); weights = chosen s, divided by
// (Σ + 1e-20) when norm and K > 1, times scale. E ≤ 2048, NG ≤ 64.
__global__ void __launch_bounds__(32) router(int* ids, float* wts, const float* logits, const float* bias,
                                             const int* allowed, int E, int NG, int TG, int K, int norm, float scale) {
  __shared__ float sg[2048], sr[2048];
  __shared__ float gscore[64];
  __shared__ int gsel[64];
  __shared__ unsigned char taken[2048];
  int t = blockIdx.x, lane = threadIdx.x;
  for (int e = lane; e < E; e += 32) {
    float s = 1.f / (1.f + expf(-logits[(long long)t * E + e]));
    float r = s + (bias ? bias[e] : 0.f);
    if (allowed && !allowed[e]) r = -INF;
    sg[e] = s;
    sr[e] = r;
    taken[e] = 0;
  }
  __syncwarp();
  int gs = E / NG;
  for (int g = lane; g < NG; g += 32) {
    float m1 = -INF, m2 = -INF;
    for (int e = g * gs; e < (g + 1) * gs; e++) {
      float v = sr[e];
      if (v > m1) { m2 = m1; m1 = v; } else if (v > m2) m2 = v;
    }
    gscore[g] = gs >= 2 ? m1 + m2 : m1;
    gsel[g] = 0;
  }
  __syncwarp();
  if (lane == 0) {
    for (int k = 0; k < TG && k < NG; k++) {
      int b = -1;
      for (int g = 0; g < NG; g++)
        if (!gsel[g] && (b < 0 || gscore[g] > gscore[b] || (gscore[b] != gscore[b] && gscore[g] == gscore[g]))) b = g;
      gsel[b] = 1;
    }
  }
  __syncwarp();
  float sum = 0.f;
  float mine = 0.f;  // lane k keeps the weight of pick k
  int myid = -1;
  for (int k = 0; k < K; k++) {
    float bv = -INF;
    int bi = -1;
    for (int e = lane; e < E; e += 32)
      if (gsel[e / gs] && !taken[e] && sr[e] > -INF && better(sr[e], e, bv, bi)) { bv = sr[e]; bi = e; }
    warp_best(bv, bi);
    if (bi >= 0) {
      if (lane == 0) taken[bi] = 1;
      sum += sg[bi];
    }
    if (lane == k) { myid = bi; mine = bi >= 0 ? sg[bi] : 0.f; }
    __syncwarp();
  }
  if (lane < K) {
    float wv = mine;
    if (norm && K > 1) wv = wv / (sum + 1e-20f);
    ids[(long long)t * K + lane] = myid;
    wts[(long long)t * K + lane] = myid >= 0 ? wv * scale : 0.f;
  }
}

// ---- routed experts: grouping on the device, then expert-major FFN, then a per-token sum ----
// table[2e], table[2e+1]: device pointers of expert e's GateUp [2I,H] and Down [H,I] (bf16), 0 when
// the expert is not held. Entry i = t·k + j is the j-th choice of token t.

__device__ __forceinline__ bool held(const unsigned long long* table, int E, int e) {
  return e >= 0 && e < E && table[2 * e] != 0 && table[2 * e + 1] != 0;
}

// route_group (one block): offsets[e]..offsets[e+1] index list[], the entries routed to e.
__global__ void route_group(int* offsets, int* list, const int* ids, const unsigned long long* table, int N, int E) {
  extern __shared__ int cnt[];  // E counts then E cursors
  int* cur = cnt + E;
  for (int e = threadIdx.x; e < E; e += blockDim.x) cnt[e] = 0;
  __syncthreads();
  for (int i = threadIdx.x; i < N; i += blockDim.x) {
    int e = ids[i];
    if (held(table, E, e)) atomicAdd(&cnt[e], 1);
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    int acc = 0;
    for (int e = 0; e < E; e++) {
      offsets[e] = acc;
      cur[e] = acc;
      acc += cnt[e];
    }
    offsets[E] = acc;
  }
  __syncthreads();
  for (int i = threadIdx.x; i < N; i += blockDim.x) {
    int e = ids[i];
    if (held(table, E, e)) list[atomicAdd(&cur[e], 1)] = i;
  }
}

#define EXP_NT 8  // tokens per pass over a weight tile

__device__ __forceinline__ void bf8(uint4 u, float* f) {
  f[0] = __uint_as_float(u.x << 16); f[1] = __uint_as_float(u.x & 0xffff0000u);
  f[2] = __uint_as_float(u.y << 16); f[3] = __uint_as_float(u.y & 0xffff0000u);
  f[4] = __uint_as_float(u.z << 16); f[5] = __uint_as_float(u.z & 0xffff0000u);
  f[6] = __uint_as_float(u.w << 16); f[7] = __uint_as_float(u.w & 0xffff0000u);
}

// rows_dot: acc[r][tt] = Σ_c rows[r][c]·xs[tt·n + c] over c < n for 4 bf16 weight rows and EXP_NT
// activation rows in shared memory; the warp splits c in 8-element chunks, every lane gets the sums.
__device__ __forceinline__ void rows_dot(float (&acc)[4][EXP_NT], const unsigned short* const (&rows)[4],
                                         const float* xs, int n, int lane) {
#pragma unroll
  for (int r = 0; r < 4; r++)
#pragma unroll
    for (int tt = 0; tt < EXP_NT; tt++) acc[r][tt] = 0.f;
  for (int c = lane * 8; c < n; c += 256) {
    float wf[4][8];
#pragma unroll
    for (int r = 0; r < 4; r++) bf8(*(const uint4*)(rows[r] + c), wf[r]);
#pragma unroll
    for (int tt = 0; tt < EXP_NT; tt++) {
      float4 a = *(const float4*)(xs + tt * n + c);
      float4 b = *(const float4*)(xs + tt * n + c + 4);
#pragma unroll
      for (int r = 0; r < 4; r++)
        acc[r][tt] += wf[r][0] * a.x + wf[r][1] * a.y + wf[r][2] * a.z + wf[r][3] * a.w + wf[r][4] * b.x +
                      wf[r][5] * b.y + wf[r][6] * b.z + wf[r][7] * b.w;
    }
  }
#pragma unroll
  for (int r = 0; r < 4; r++)
#pragma unroll
    for (int tt = 0; tt < EXP_NT; tt++) acc[r][tt] = warp_sum(acc[r][tt]);
}

// expert_gateup: block (e, tile of 16 i's), 8 warps × 2 i's. For every entry routed to e:
//   act[entry, i] = silu(G_e[i,:]·x[t,:]) · (U_e[i,:]·x[t,:]), t = entry / k.
// Each weight row is read once per EXP_NT tokens (16-byte loads), x rows sit in shared memory.
__global__ void __launch_bounds__(256) expert_gateup(float* act, const float* x, const int* offsets, const int* list,
                                                     const unsigned long long* table, int H, int I, int k) {
  extern __shared__ float xs[];  // [EXP_NT][H]
  int e = blockIdx.x;
  int b0 = offsets[e], n = offsets[e + 1] - b0;
  if (n == 0) return;
  const unsigned short* gu = (const unsigned short*)table[2 * e];
  int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
  int i0 = blockIdx.y * 16 + w * 2;
  for (int c0 = 0; c0 < n; c0 += EXP_NT) {
    int nc = min(EXP_NT, n - c0);
    __syncthreads();
    for (int q = threadIdx.x; q < EXP_NT * H; q += blockDim.x) {
      int tt = q / H, c = q % H;
      xs[q] = tt < nc ? x[(long long)(list[b0 + c0 + tt] / k) * H + c] : 0.f;
    }
    __syncthreads();
    const unsigned short* rows[4];
#pragma unroll
    for (int r = 0; r < 4; r++) {
      int i = min(i0 + (r & 1), I - 1);
      rows[r] = gu + (long long)((r < 2 ? 0 : I) + i) * H;
    }
    float acc[4][EXP_NT];
    rows_dot(acc, rows, xs, H, lane);
    if (lane < EXP_NT && lane < nc) {
      int entry = list[b0 + c0 + lane];
#pragma unroll
      for (int tt = 0; tt < EXP_NT; tt++)
        if (tt == lane) {
#pragma unroll
          for (int r = 0; r < 2; r++)
            if (i0 + r < I) act[(long long)entry * I + i0 + r] = silu(acc[r][tt]) * acc[r + 2][tt];
        }
    }
  }
}

// expert_down: block (e, tile of 32 h's), 8 warps × 4 h's. For every entry routed to e:
//   ys[entry, h] = weights[entry] · (D_e[h,:]·act[entry,:]).
__global__ void __launch_bounds__(256) expert_down(float* ys, const float* act, const float* weights, const int* offsets,
                                                   const int* list, const unsigned long long* table, int H, int I) {
  extern __shared__ float as[];  // [EXP_NT][I]
  int e = blockIdx.x;
  int b0 = offsets[e], n = offsets[e + 1] - b0;
  if (n == 0) return;
  const unsigned short* dn = (const unsigned short*)table[2 * e + 1];
  int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
  int h0 = blockIdx.y * 32 + w * 4;
  for (int c0 = 0; c0 < n; c0 += EXP_NT) {
    int nc = min(EXP_NT, n - c0);
    __syncthreads();
    for (int q = threadIdx.x; q < EXP_NT * I; q += blockDim.x) {
      int tt = q / I, c = q % I;
      as[q] = tt < nc ? act[(long long)list[b0 + c0 + tt] * I + c] : 0.f;
    }
    __syncthreads();
    const unsigned short* rows[4];
#pragma unroll
    for (int r = 0; r < 4; r++) rows[r] = dn + (long long)min(h0 + r, H - 1) * I;
    float acc[4][EXP_NT];
    rows_dot(acc, rows, as, I, lane);
    if (lane < EXP_NT && lane < nc) {
      int entry = list[b0 + c0 + lane];
      float wt = weights[entry];
#pragma unroll
      for (int tt = 0; tt < EXP_NT; tt++)
        if (tt == lane) {
#pragma unroll
          for (int r = 0; r < 4; r++)
            if (h0 + r < H) ys[(long long)entry * H + h0 + r] = wt * acc[r][tt];
        }
    }
  }
}

// expert_combine: dst[t,:] = Σ_j ys[t·k+j,:] over the held choices, in j order (deterministic).
__global__ void expert_combine(float* dst, const float* ys, const int* ids, const unsigned long long* table, int H,
                               int k, int E) {
  int t = blockIdx.x;
  for (int c = threadIdx.x; c < H; c += blockDim.x) {
    float s = 0.f;
    for (int j = 0; j < k; j++)
      if (held(table, E, ids[t * k + j])) s += ys[((long long)t * k + j) * H + c];
    dst[(long long)t * H + c] = s;
  }
}

// gather_rows: dst[i,:] = src[idx[i],:], rows of `words` 16-bit words.
__global__ void gather_rows(unsigned short* dst, const unsigned short* src, const int* idx, int words, int srcRows) {
  int i = blockIdx.x, r = idx[i];
  for (int c = threadIdx.x; c < words; c += blockDim.x)
    dst[(long long)i * words + c] = (r >= 0 && r < srcRows) ? src[(long long)r * words + c] : 0;
}

// cvt_f32: dst = x rounded to bf16 (dt 2) or f16 (dt 3).
__global__ void cvt_f32(unsigned short* dst, const float* x, long long n, int dt) {
  for (long long k = blockIdx.x * (long long)blockDim.x + threadIdx.x; k < n; k += (long long)gridDim.x * blockDim.x)
    dst[k] = dt == 3 ? f2h(x[k]) : f2bf(x[k]);
}

// ---- LM head: cuBLAS writes a chunk of logits [T, Vc] to device scratch; these reduce it ----

// lm_partial: block (segment, row). Over the segment's logits l: pmax = max(l·invTemp),
// psum = Σ exp(l·invTemp − pmax), and its K best (value, id), descending, ties to the lower id.
__global__ void lm_partial(const float* logits, int Vc, int vBase, int segLen, int K, float invTemp, int segBase,
                           int nseg, float* pval, int* pidx, float* pmax, float* psum) {
  int seg = blockIdx.x, t = blockIdx.y;
  int c0 = seg * segLen, c1 = min(c0 + segLen, Vc);
  const float* row = logits + (long long)t * Vc;
  float m = -INF, s = 0.f;
  for (int c = c0 + threadIdx.x; c < c1; c += blockDim.x) {
    float z = row[c] * invTemp;
    if (z > m) { s = s * expf(m - z) + 1.f; m = z; } else s += expf(z - m);
  }
  __shared__ float sm[32], ssum[32];
  int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
  float wm = warp_max(m);
  s = m == -INF ? 0.f : s * expf(m - wm);
  s = warp_sum(s);
  if (lane == 0) { sm[w] = wm; ssum[w] = s; }
  __syncthreads();
  long long slot = (long long)t * nseg + segBase + seg;
  if (threadIdx.x == 0) {
    float M = -INF;
    for (int i = 0; i < nw; i++) M = fmaxf(M, sm[i]);
    float S = 0.f;
    for (int i = 0; i < nw; i++) S += sm[i] == -INF ? 0.f : ssum[i] * expf(sm[i] - M);
    pmax[slot] = M;
    psum[slot] = S;
  }
  float pv = INF;
  int pi = -1;
  for (int k = 0; k < K; k++) {
    float bv = -INF;
    int bi = -1;
    for (int c = c0 + threadIdx.x; c < c1; c += blockDim.x) {
      float v = row[c];
      int id = vBase + c;
      if (after(v, id, pv, pi) && better(v, id, bv, bi)) { bv = v; bi = id; }
    }
    block_best(bv, bi);
    if (threadIdx.x == 0) { pval[slot * K + k] = bv; pidx[slot * K + k] = bi; }
    pv = bv;
    pi = bi;
    if (bi < 0) pv = -INF, pi = 0x7fffffff;
  }
}

// lm_final: per row, merge the nseg partials: lse = M + log Σ psum·exp(pmax − M); the K best ids.
__global__ void lm_final(int* ids, float* logits, float* lse, const float* pval, const int* pidx, const float* pmax,
                         const float* psum, int nseg, int K) {
  int t = blockIdx.x;
  float m = -INF;
  for (int i = threadIdx.x; i < nseg; i += blockDim.x) m = fmaxf(m, pmax[(long long)t * nseg + i]);
  __shared__ float part[32];
  int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
  m = warp_max(m);
  if (lane == 0) part[w] = m;
  __syncthreads();
  float M = -INF;
  for (int i = 0; i < nw; i++) M = fmaxf(M, part[i]);
  float s = 0.f;
  for (int i = threadIdx.x; i < nseg; i += blockDim.x) {
    float pm = pmax[(long long)t * nseg + i];
    if (pm > -INF) s += psum[(long long)t * nseg + i] * expf(pm - M);
  }
  s = block_sum(s);
  if (threadIdx.x == 0) lse[t] = M + logf(s);
  float pv = INF;
  int pi = -1;
  int n = nseg * K;
  for (int k = 0; k < K; k++) {
    float bv = -INF;
    int bi = -1;
    for (int c = threadIdx.x; c < n; c += blockDim.x) {
      float v = pval[(long long)t * n + c];
      int id = pidx[(long long)t * n + c];
      if (id >= 0 && after(v, id, pv, pi) && better(v, id, bv, bi)) { bv = v; bi = id; }
    }
    block_best(bv, bi);
    if (threadIdx.x == 0) { ids[t * K + k] = bi; logits[t * K + k] = bv; }
    pv = bv;
    pi = bi;
    if (bi < 0) pv = -INF, pi = 0x7fffffff;
  }
}

}  // extern "C"

// ---- routed experts on the tensor cores (mma.sync m16n8k16 bf16, fp32 accumulate) ----
// Activations are split into two bf16 terms, x ≈ hi + lo with hi = bf16(x), lo = bf16(x − hi)
// (16 significant bits), and every product is W·hi + W·lo; the bf16 weights are exact, so the
// result matches the fp32-activation kernels to ~1e-6 relative. A and B fragments both come
// from 16-byte loads of 8 consecutive k: lane (g = lane/4, c = lane%4) holds k0+8c..k0+8c+7 of
// its row, and the k order inside a 32-wide chunk is permuted identically for A and B (two mma
// per chunk), which leaves each dot product unchanged.

__device__ __forceinline__ void mma_bf16(float* d, unsigned a0, unsigned a1, unsigned a2, unsigned a3, unsigned b0,
                                         unsigned b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// mma_chunk: d += A(32 k of rows g, g+8: ua, ub) · B(32 k of column g: x).
__device__ __forceinline__ void mma_chunk(float* d, uint4 ua, uint4 ub, uint4 x) {
  mma_bf16(d, ua.x, ub.x, ua.y, ub.y, x.x, x.y);
  mma_bf16(d, ua.z, ub.z, ua.w, ub.w, x.z, x.w);
}

__device__ __forceinline__ uint4 ldg16(const unsigned short* p) { return __ldg((const uint4*)p); }

extern "C" {

// split_bf16: hi[i] = bf16(x[i]), lo[i] = bf16(x[i] − hi[i]).
__global__ void split_bf16(unsigned short* hi, unsigned short* lo, const float* x, long long n) {
  for (long long k = blockIdx.x * (long long)blockDim.x + threadIdx.x; k < n; k += (long long)gridDim.x * blockDim.x) {
    float v = x[k];
    unsigned short h = f2bf(v);
    hi[k] = h;
    lo[k] = f2bf(v - bf2f(h));
  }
}

}  // extern "C"

// mma_tiles: the warp's part of two m16 weight tiles times NG groups of 8 activation rows over
// kw columns, 32 at a time: acc[q][0..3] += A(rows a0 | a8)·B_q, acc[q][4..7] += A(rows a16 |
// a24)·B_q, B_q = bh[q] (+ bl[q] when LO, the lo bf16 terms). Then, between two block barriers
// (the first frees red from the previous pass), the warp w stores acc at red[w][q·8 + r][lane].
template <int NG, bool LO>
__device__ __forceinline__ void mma_tiles(float* red, const unsigned short* a0, const unsigned short* a8,
                                          const unsigned short* a16, const unsigned short* a24,
                                          const unsigned short* const (&bh)[NG], const unsigned short* const (&bl)[NG],
                                          int kw) {
  int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
  float acc[NG][8];
#pragma unroll
  for (int q = 0; q < NG; q++)
#pragma unroll
    for (int r = 0; r < 8; r++) acc[q][r] = 0.f;
#pragma unroll 2
  for (int kk = 0; kk < kw; kk += 32) {
    uint4 w0 = ldg16(a0 + kk), w8 = ldg16(a8 + kk), w16 = ldg16(a16 + kk), w24 = ldg16(a24 + kk);
#pragma unroll
    for (int q = 0; q < NG; q++) {
      uint4 h = ldg16(bh[q] + kk);
      if (LO) {
        uint4 l = ldg16(bl[q] + kk);
        mma_chunk(acc[q], w0, w8, h);
        mma_chunk(acc[q], w0, w8, l);
        mma_chunk(acc[q] + 4, w16, w24, h);
        mma_chunk(acc[q] + 4, w16, w24, l);
      } else {
        mma_chunk(acc[q], w0, w8, h);
        mma_chunk(acc[q] + 4, w16, w24, h);
      }
    }
  }
  __syncthreads();
#pragma unroll
  for (int q = 0; q < NG; q++)
#pragma unroll
    for (int r = 0; r < 8; r++) red[(w * 32 + q * 8 + r) * 32 + lane] = acc[q][r];
  __syncthreads();
}

#define XM_PASS 32  // tokens per pass over an expert's weight tile (4 mma column groups)

// gateup pass: 8 warps split H; warp w accumulates 16 gate rows and the matching 16 up rows
// over its H/8 columns for NG groups of 8 entries, then the block sums the warps in order.
// LO: the activations are hi + lo bf16 terms (float32-exact products); otherwise hi only (xl,
// actl unused).
template <int NG, bool LO>
__device__ __forceinline__ void gateup_pass(float* red, unsigned short* acth, unsigned short* actl,
                                            const unsigned short* xh, const unsigned short* xl, const int* lst, int nc,
                                            const unsigned short* gu, int H, int I, int k, int i0) {
  int lane = threadIdx.x & 31, w = threadIdx.x >> 5, g = lane >> 2, c = lane & 3;
  int kw = H >> 3;
  long long col = (long long)w * kw + 8 * c;
  const unsigned short* ag0 = gu + (long long)(i0 + g) * H + col;
  const unsigned short* ag8 = ag0 + 8LL * H;
  const unsigned short* au0 = ag0 + (long long)I * H;
  const unsigned short* au8 = au0 + 8LL * H;
  const unsigned short* bh[NG];
  const unsigned short* bl[NG];
#pragma unroll
  for (int q = 0; q < NG; q++) {
    int slot = min(q * 8 + g, nc - 1);
    long long tok = lst[slot] / k;
    bh[q] = xh + tok * H + col;
    bl[q] = LO ? xl + tok * H + col : nullptr;
  }
  mma_tiles<NG, LO>(red, ag0, ag8, au0, au8, bh, bl, kw);
  for (int idx = threadIdx.x; idx < NG * 8 * 16; idx += blockDim.x) {
    int il = idx & 15, slot = idx >> 4;
    if (slot >= nc) continue;
    int q = slot >> 3, cl = slot & 7, r = (il >> 3) * 2 + (cl & 1), ln = (il & 7) * 4 + (cl >> 1);
    float sg = 0.f, su = 0.f;
#pragma unroll
    for (int ww = 0; ww < 8; ww++) {
      sg += red[(ww * 32 + q * 8 + r) * 32 + ln];
      su += red[(ww * 32 + q * 8 + 4 + r) * 32 + ln];
    }
    float a = silu(sg) * su;
    long long o = (long long)lst[slot] * I + i0 + il;
    unsigned short hi = f2bf(a);
    acth[o] = hi;
    if (LO) actl[o] = f2bf(a - bf2f(hi));
  }
}

// gateup_mma: the body of expert_gateup_mma (LO) and expert_gateup_mma1 (!LO).
template <bool LO>
__device__ __forceinline__ void gateup_mma(unsigned short* acth, unsigned short* actl, const unsigned short* xh,
                                           const unsigned short* xl, const int* offsets, const int* list,
                                           const unsigned long long* table, int H, int I, int k) {
  __shared__ float red[8 * 32 * 32];
  int e = blockIdx.x;
  int b0 = offsets[e], n = offsets[e + 1] - b0;
  if (n == 0) return;
  const unsigned short* gu = (const unsigned short*)table[2 * e];
  int i0 = blockIdx.y * 16;
  for (int p0 = 0; p0 < n; p0 += XM_PASS) {
    int nc = min(XM_PASS, n - p0);
    const int* lst = list + b0 + p0;
    if (nc <= 8) gateup_pass<1, LO>(red, acth, actl, xh, xl, lst, nc, gu, H, I, k, i0);
    else if (nc <= 16) gateup_pass<2, LO>(red, acth, actl, xh, xl, lst, nc, gu, H, I, k, i0);
    else gateup_pass<4, LO>(red, acth, actl, xh, xl, lst, nc, gu, H, I, k, i0);
  }
}

extern "C" {

// expert_gateup_mma: block (e, tile of 16 i's), 256 threads. For every entry routed to e:
//   act[entry, i] = silu(G_e[i,:]·x[t,:]) · (U_e[i,:]·x[t,:]), t = entry / k, with x given and
// act stored as hi + lo bf16 terms (x ≈ xh + xl to float32 precision). H a multiple of 256, I of 16.
__global__ void __launch_bounds__(256, 2) expert_gateup_mma(unsigned short* acth, unsigned short* actl,
                                                            const unsigned short* xh, const unsigned short* xl,
                                                            const int* offsets, const int* list,
                                                            const unsigned long long* table, int H, int I, int k) {
  gateup_mma<true>(acth, actl, xh, xl, offsets, list, table, H, I, k);
}

// expert_gateup_mma1: expert_gateup_mma with x and act as single bf16 terms (bf16 activations, as
// the dense bf16 GEMMs use; half the tensor-core work and activation traffic).
__global__ void __launch_bounds__(256, 2) expert_gateup_mma1(unsigned short* act, const unsigned short* x,
                                                             const int* offsets, const int* list,
                                                             const unsigned long long* table, int H, int I, int k) {
  gateup_mma<false>(act, nullptr, x, nullptr, offsets, list, table, H, I, k);
}

}  // extern "C"

// down pass: 4 warps split I; warp w accumulates 32 h rows (two m16 tiles) over its I/4 columns.
// LO as in gateup_pass.
template <int NG, bool LO>
__device__ __forceinline__ void down_pass(float* red, float* ys, const unsigned short* acth, const unsigned short* actl,
                                          const float* weights, const int* lst, int nc, const unsigned short* dn, int H,
                                          int I, int h0) {
  int lane = threadIdx.x & 31, w = threadIdx.x >> 5, g = lane >> 2, c = lane & 3;
  int kw = I >> 2;
  long long col = (long long)w * kw + 8 * c;
  const unsigned short* a0 = dn + (long long)(h0 + g) * I + col;
  const unsigned short* a8 = a0 + 8LL * I;
  const unsigned short* a16 = a0 + 16LL * I;
  const unsigned short* a24 = a0 + 24LL * I;
  const unsigned short* bh[NG];
  const unsigned short* bl[NG];
#pragma unroll
  for (int q = 0; q < NG; q++) {
    long long ent = lst[min(q * 8 + g, nc - 1)];
    bh[q] = acth + ent * I + col;
    bl[q] = LO ? actl + ent * I + col : nullptr;
  }
  mma_tiles<NG, LO>(red, a0, a8, a16, a24, bh, bl, kw);
  for (int idx = threadIdx.x; idx < NG * 8 * 32; idx += blockDim.x) {
    int hl = idx & 31, slot = idx >> 5;
    if (slot >= nc) continue;
    int m = hl >> 4, il = hl & 15;
    int q = slot >> 3, cl = slot & 7, r = m * 4 + (il >> 3) * 2 + (cl & 1), ln = (il & 7) * 4 + (cl >> 1);
    float s = 0.f;
#pragma unroll
    for (int ww = 0; ww < 4; ww++) s += red[(ww * 32 + q * 8 + r) * 32 + ln];
    int ent = lst[slot];
    ys[(long long)ent * H + h0 + hl] = weights[ent] * s;
  }
}

// down_mma: the body of expert_down_mma (LO) and expert_down_mma1 (!LO).
template <bool LO>
__device__ __forceinline__ void down_mma(float* ys, const unsigned short* acth, const unsigned short* actl,
                                         const float* weights, const int* offsets, const int* list,
                                         const unsigned long long* table, int H, int I) {
  __shared__ float red[4 * 32 * 32];
  int e = blockIdx.x;
  int b0 = offsets[e], n = offsets[e + 1] - b0;
  if (n == 0) return;
  const unsigned short* dn = (const unsigned short*)table[2 * e + 1];
  int h0 = blockIdx.y * 32;
  for (int p0 = 0; p0 < n; p0 += XM_PASS) {
    int nc = min(XM_PASS, n - p0);
    const int* lst = list + b0 + p0;
    if (nc <= 8) down_pass<1, LO>(red, ys, acth, actl, weights, lst, nc, dn, H, I, h0);
    else if (nc <= 16) down_pass<2, LO>(red, ys, acth, actl, weights, lst, nc, dn, H, I, h0);
    else down_pass<4, LO>(red, ys, acth, actl, weights, lst, nc, dn, H, I, h0);
  }
}

extern "C" {

// expert_down_mma: block (e, tile of 32 h's), 128 threads. For every entry routed to e:
//   ys[entry, h] = weights[entry] · (D_e[h,:]·act[entry,:]), act as hi + lo bf16 terms.
// I a multiple of 128, H of 32.
__global__ void __launch_bounds__(128, 4) expert_down_mma(float* ys, const unsigned short* acth,
                                                          const unsigned short* actl, const float* weights,
                                                          const int* offsets, const int* list,
                                                          const unsigned long long* table, int H, int I) {
  down_mma<true>(ys, acth, actl, weights, offsets, list, table, H, I);
}

// expert_down_mma1: expert_down_mma with act as single bf16 terms.
__global__ void __launch_bounds__(128, 4) expert_down_mma1(float* ys, const unsigned short* act, const float* weights,
                                                           const int* offsets, const int* list,
                                                           const unsigned long long* table, int H, int I) {
  down_mma<false>(ys, act, nullptr, weights, offsets, list, table, H, I);
}

// fill_random: element i = (2u − 1)·scale with u = hash(seed, i) ∈ [0,1) (I32: ⌊u·scale⌋).
__global__ void fill_random(void* p, unsigned long long n, unsigned long long seed, float scale, int dt) {
  for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n;
       i += (unsigned long long)gridDim.x * blockDim.x) {
    unsigned long long z = seed + 0x9e3779b97f4a7c15ull * (i + 1);  // splitmix64
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    float u = (float)(z >> 40) * (1.0f / 16777216.0f);
    float v = (2.f * u - 1.f) * scale;
    if (dt == 1) ((float*)p)[i] = v;
    else if (dt == 2) ((unsigned short*)p)[i] = f2bf(v);
    else if (dt == 3) ((unsigned short*)p)[i] = f2h(v);
    else ((int*)p)[i] = (int)(u * scale);
  }
}

// read_stream: reads every 16-byte word of p[0, n16) once (grid-stride, four loads in flight per
// thread, streaming cache hint) and writes nothing unless the XOR of a thread's words equals key,
// which keeps the loads alive. It measures the device's streaming-read rate: Σ bytes / time.
__global__ void __launch_bounds__(512) read_stream(const uint4* __restrict__ p, unsigned long long n16,
                                                   unsigned key, unsigned* sink) {
  const unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
  unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x;
  unsigned x = 0;
  for (; i + 3 * stride < n16; i += 4 * stride) {
    uint4 a = __ldcs(p + i), b = __ldcs(p + i + stride), c = __ldcs(p + i + 2 * stride), d = __ldcs(p + i + 3 * stride);
    x ^= a.x ^ a.y ^ a.z ^ a.w ^ b.x ^ b.y ^ b.z ^ b.w ^ c.x ^ c.y ^ c.z ^ c.w ^ d.x ^ d.y ^ d.z ^ d.w;
  }
  for (; i < n16; i += stride) {
    uint4 a = __ldcs(p + i);
    x ^= a.x ^ a.y ^ a.z ^ a.w;
  }
  if (x == key) sink[0] = x;
}

}  // extern "C"
