// Training-mode batch normalization fused with the ReLU after it (and the shortcut addition between them):
//   y = relu(BN(x) [+ s]),  BN(x) = (x - mean) / sqrt(var + eps) * w + b,  batch statistics over N, H, W.
// For channels_last CPU tensors, seen as an M x C matrix (M = N*H*W rows, C contiguous channels). PyTorch runs the
// same computation as three to five separate passes over memory (BN statistics, normalization, addition, ReLU, and
// the same again backward); here it is two passes forward and two backward. Python side, fallback and tests:
// resnet/models/fused.py. Activations in float, double or bfloat16; sums in double across blocks of rows.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

constexpr int64_t kRows = 64;  // rows per block: partial sums in the working precision, blocks summed in double

// Storage type -> arithmetic type: bfloat16 is held as its raw 16 bits and widened to float by a shift.
template <typename S> struct Acc { using type = S; };
template <> struct Acc<uint16_t> { using type = float; };

inline float ld(float v) { return v; }
inline double ld(double v) { return v; }
inline float ld(uint16_t v) {
    uint32_t u = static_cast<uint32_t>(v) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
inline void st(float& o, float v) { o = v; }
inline void st(double& o, double v) { o = v; }
inline void st(uint16_t& o, float v) {  // round to nearest even, as c10::BFloat16 does
    uint32_t u;
    std::memcpy(&u, &v, 4);
    u += 0x7FFFu + ((u >> 16) & 1u);
    o = std::isnan(v) ? uint16_t(0x7FC0) : static_cast<uint16_t>(u >> 16);
}

// NaN stays NaN, as in PyTorch's ReLU (std::max(0, NaN) would give 0 and hide a divergence from the loss check).
template <typename A>
inline A relu(A v) { return v < A(0) ? A(0) : v; }

template <typename S>
const S* ptr(const torch::Tensor& t) { return reinterpret_cast<const S*>(t.data_ptr()); }
template <typename S>
S* mut(torch::Tensor& t) { return reinterpret_cast<S*>(t.data_ptr()); }

// Sums over the rows of one (or two) M x C matrices, blockwise: each block of kRows rows is summed in the working
// precision, the blocks in double. `rows(i0, i1, a, b)` adds the terms of rows [i0, i1) into a[0..C) and b[0..C).
template <typename A, typename F>
void sum_rows(int64_t M, int64_t C, std::vector<double>& total_a, std::vector<double>& total_b, F rows) {
    const int64_t blocks = (M + kRows - 1) / kRows;
    std::vector<double> part(static_cast<size_t>(blocks * 2 * C));
    at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
        std::vector<A> a(C), b(C);
        for (int64_t blk = b0; blk < b1; ++blk) {
            std::fill(a.begin(), a.end(), A(0));
            std::fill(b.begin(), b.end(), A(0));
            rows(blk * kRows, std::min(M, (blk + 1) * kRows), a.data(), b.data());
            double* p = part.data() + blk * 2 * C;
            for (int64_t c = 0; c < C; ++c) { p[c] = a[c]; p[C + c] = b[c]; }
        }
    });
    total_a.assign(C, 0.0);
    total_b.assign(C, 0.0);
    for (int64_t blk = 0; blk < blocks; ++blk) {
        const double* p = part.data() + blk * 2 * C;
        for (int64_t c = 0; c < C; ++c) { total_a[c] += p[c]; total_b[c] += p[C + c]; }
    }
}

// The four loops over rows [i0, i1) that touch the activations. Their pointers are function parameters declared
// __restrict__, the form in which GCC trusts that outputs and inputs do not overlap; captured by a lambda, the same
// pointers lose it, and for fp32 with 16 channels GCC then emitted scalar code for a float output next to float
// coefficients (the forward ran at a third of the speed of PyTorch's BN: 6.1 against 2.2 ms at 128x16x32x32, one
// thread). Not inlined, so that nothing can drop the qualifier; each call covers many rows.
#define RESNET_ROWS __attribute__((noinline))
#if defined(__clang__)
#define RESNET_CHANNELS _Pragma("clang loop unroll(disable)")
#elif defined(__GNUC__)
#define RESNET_CHANNELS _Pragma("GCC unroll 1")
#else
#define RESNET_CHANNELS
#endif

template <typename S, typename A, int CC>
RESNET_ROWS void stats_rows(int64_t i0, int64_t i1, int64_t C_, const S* __restrict__ x, const A* __restrict__ shift,
                            A* __restrict__ a, A* __restrict__ q) {
    const int64_t C = CC > 0 ? CC : C_;
    for (int64_t i = i0; i < i1; ++i) {
        const S* __restrict__ r = x + i * C;
        RESNET_CHANNELS
        for (int64_t c = 0; c < C; ++c) {
            const A v = ld(r[c]) - shift[c];
            a[c] += v;
            q[c] += v * v;
        }
    }
}

template <typename S, typename A, int CC>
RESNET_ROWS void normalize_rows(int64_t i0, int64_t i1, int64_t C_, const S* __restrict__ x, const S* __restrict__ s,
                                const A* __restrict__ scale, const A* __restrict__ offset, S* __restrict__ y) {
    const int64_t C = CC > 0 ? CC : C_;
    for (int64_t i = i0; i < i1; ++i) {
        const S* __restrict__ r = x + i * C;
        S* __restrict__ o = y + i * C;
        if (s) {
            const S* __restrict__ t = s + i * C;
            RESNET_CHANNELS
            for (int64_t c = 0; c < C; ++c) st(o[c], relu(ld(r[c]) * scale[c] + offset[c] + ld(t[c])));
        } else {
            RESNET_CHANNELS
            for (int64_t c = 0; c < C; ++c) st(o[c], relu(ld(r[c]) * scale[c] + offset[c]));
        }
    }
}

// g = dL/dy where y > 0 (the gradient through the ReLU; written to gs, the shortcut's gradient, where gs is given).
template <typename S, typename A, int CC>
RESNET_ROWS void grad_stats_rows(int64_t i0, int64_t i1, int64_t C_, const S* __restrict__ gy, const S* __restrict__ y,
                                 const S* __restrict__ x, const A* __restrict__ mean, A* __restrict__ a,
                                 A* __restrict__ q, S* __restrict__ gs) {
    const int64_t C = CC > 0 ? CC : C_;
    for (int64_t i = i0; i < i1; ++i) {
        const int64_t o = i * C;
        if (gs) {
            RESNET_CHANNELS
            for (int64_t c = 0; c < C; ++c) {
                const A g = ld(y[o + c]) > A(0) ? ld(gy[o + c]) : A(0);
                a[c] += g;
                q[c] += g * (ld(x[o + c]) - mean[c]);
                st(gs[o + c], g);
            }
        } else {
            RESNET_CHANNELS
            for (int64_t c = 0; c < C; ++c) {
                const A g = ld(y[o + c]) > A(0) ? ld(gy[o + c]) : A(0);
                a[c] += g;
                q[c] += g * (ld(x[o + c]) - mean[c]);
            }
        }
    }
}

template <typename S, typename A, int CC>
RESNET_ROWS void grad_input_rows(int64_t i0, int64_t i1, int64_t C_, const S* __restrict__ gy, const S* __restrict__ y,
                                 const S* __restrict__ x, const S* __restrict__ gs, const A* __restrict__ alpha,
                                 const A* __restrict__ beta, const A* __restrict__ gamma, S* __restrict__ gx) {
    const int64_t C = CC > 0 ? CC : C_;
    for (int64_t i = i0; i < i1; ++i) {
        const int64_t o = i * C;
        if (gs) {
            RESNET_CHANNELS
            for (int64_t c = 0; c < C; ++c)
                st(gx[o + c], ld(gs[o + c]) * alpha[c] + ld(x[o + c]) * beta[c] + gamma[c]);
        } else {
            RESNET_CHANNELS
            for (int64_t c = 0; c < C; ++c) {
                const A g = ld(y[o + c]) > A(0) ? ld(gy[o + c]) : A(0);
                st(gx[o + c], g * alpha[c] + ld(x[o + c]) * beta[c] + gamma[c]);
            }
        }
    }
}

void update(torch::Tensor& running, int64_t c, double value, double momentum) {
    if (running.scalar_type() == torch::kFloat64) {
        double& r = running.data_ptr<double>()[c];
        r = (1 - momentum) * r + momentum * value;
    } else {
        float& r = running.data_ptr<float>()[c];
        r = static_cast<float>((1 - momentum) * r + momentum * value);
    }
}

// CC: the channel count when known at compile time (the inner loops then have a fixed length and vectorize without
// remainders), 0 for any other count.
template <typename S, int CC>
std::vector<torch::Tensor> forward_impl(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b,
                                        const c10::optional<torch::Tensor>& s, torch::Tensor& running_mean,
                                        torch::Tensor& running_var, double momentum, double eps) {
    using A = typename Acc<S>::type;
    const int64_t C = CC > 0 ? CC : x.size(1), M = x.numel() / C;
    const S* xp = ptr<S>(x);
    // Statistics about a shift (the first row), so that the one-pass variance does not cancel when |mean| >> std.
    std::vector<A> shift_(C);
    A* shift = shift_.data();
    for (int64_t c = 0; c < C; ++c) shift[c] = ld(xp[c]);
    std::vector<double> s1, s2;
    sum_rows<A>(M, C, s1, s2, [&](int64_t i0, int64_t i1, A* a, A* q) {
        stats_rows<S, A, CC>(i0, i1, C, xp, shift, a, q);
    });
    auto opts = w.options().dtype(std::is_same<A, double>::value ? torch::kFloat64 : torch::kFloat32);
    torch::Tensor mean = torch::empty({C}, opts), invstd = torch::empty({C}, opts);
    std::vector<A> scale_(C), offset_(C);
    A* scale = scale_.data();
    A* offset = offset_.data();
    {
        auto wa = w.to(opts.dtype()), ba = b.to(opts.dtype());
        const A* wp = wa.template data_ptr<A>();
        const A* bp = ba.template data_ptr<A>();
        A* mp = mean.template data_ptr<A>();
        A* ip = invstd.template data_ptr<A>();
        for (int64_t c = 0; c < C; ++c) {
            const double d = s1[c] / M, var = std::max(s2[c] / M - d * d, 0.0);
            const double m = shift[c] + d, is = 1.0 / std::sqrt(var + eps);
            mp[c] = static_cast<A>(m);
            ip[c] = static_cast<A>(is);
            scale[c] = static_cast<A>(wp[c] * is);
            offset[c] = static_cast<A>(bp[c] - m * wp[c] * is);
            if (running_mean.defined()) {  // PyTorch's update: momentum-weighted, the unbiased variance
                const double unbiased = var * M / std::max<int64_t>(M - 1, 1);
                update(running_mean, c, m, momentum);
                update(running_var, c, unbiased, momentum);
            }
        }
    }
    torch::Tensor y = torch::empty_like(x);
    S* yp = mut<S>(y);
    const S* sp = s ? ptr<S>(*s) : nullptr;
    at::parallel_for(0, M, 256, [&](int64_t i0, int64_t i1) {
        normalize_rows<S, A, CC>(i0, i1, C, xp, sp, scale, offset, yp);
    });
    return {y, mean, invstd};
}

template <typename S, int CC>
std::vector<torch::Tensor> backward_impl(const torch::Tensor& gy, const torch::Tensor& y, const torch::Tensor& x,
                                         const torch::Tensor& mean, const torch::Tensor& invstd,
                                         const torch::Tensor& w, bool shortcut_grad) {
    using A = typename Acc<S>::type;
    const int64_t C = CC > 0 ? CC : x.size(1), M = x.numel() / C;
    const S* gp = ptr<S>(gy);
    const S* yp = ptr<S>(y);
    const S* xp = ptr<S>(x);
    const A* mp = mean.template data_ptr<A>();
    const A* ip = invstd.template data_ptr<A>();
    torch::Tensor gs;
    S* gsp = nullptr;
    if (shortcut_grad) {  // the gradient that reaches the shortcut: dL/dy where y > 0
        gs = torch::empty_like(x);
        gsp = mut<S>(gs);
    }
    std::vector<double> t1, t2;  // sum of g, sum of g * (x - mean), with g the gradient through the ReLU
    sum_rows<A>(M, C, t1, t2, [&](int64_t i0, int64_t i1, A* a, A* q) {
        grad_stats_rows<S, A, CC>(i0, i1, C, gp, yp, xp, mp, a, q, gsp);
    });
    auto wa = w.to(mean.scalar_type());
    const A* wp = wa.template data_ptr<A>();
    torch::Tensor gw = torch::empty({C}, mean.options()), gb = torch::empty({C}, mean.options());
    // dL/dx = w * invstd * (g - mean(g) - xhat * mean(g * xhat)) = g * alpha + x * beta + gamma, per channel.
    std::vector<A> coef(3 * C);
    A* alpha = coef.data();
    A* beta = alpha + C;
    A* gamma = beta + C;
    for (int64_t c = 0; c < C; ++c) {
        const double is = ip[c], k = wp[c] * is, m1 = t1[c] / M, m2 = t2[c] / M * is * is;
        gw.template data_ptr<A>()[c] = static_cast<A>(t2[c] * is);
        gb.template data_ptr<A>()[c] = static_cast<A>(t1[c]);
        alpha[c] = static_cast<A>(k);
        beta[c] = static_cast<A>(-k * m2);
        gamma[c] = static_cast<A>(k * (m2 * mp[c] - m1));
    }
    torch::Tensor gx = torch::empty_like(x);
    S* gxp = mut<S>(gx);
    at::parallel_for(0, M, 256, [&](int64_t i0, int64_t i1) {
        grad_input_rows<S, A, CC>(i0, i1, C, gp, yp, xp, gsp, alpha, beta, gamma, gxp);
    });
    return {gx, gw.to(w.scalar_type()), gb.to(w.scalar_type()), gs};
}

// The channel counts of the paper's nets (CIFAR: 16, 32, 64; ImageNet stems and first stages: 64, 128, 256) get
// their own compiled loops; bf16 and fp32 only (float64 is for the tests).
#define RESNET_BY_CHANNELS(S, FN, ...)                                      \
    switch (x.size(1)) {                                                    \
        case 16: return FN<S, 16>(__VA_ARGS__);                             \
        case 32: return FN<S, 32>(__VA_ARGS__);                             \
        case 64: return FN<S, 64>(__VA_ARGS__);                             \
        case 128: return FN<S, 128>(__VA_ARGS__);                           \
        case 256: return FN<S, 256>(__VA_ARGS__);                           \
        default: return FN<S, 0>(__VA_ARGS__);                              \
    }

// x (and s, gy, y): N x C x H x W, channels_last-contiguous, all one dtype; w, b: C, float (double for double x).
std::vector<torch::Tensor> forward(torch::Tensor x, torch::Tensor w, torch::Tensor b, c10::optional<torch::Tensor> s,
                                   torch::Tensor running_mean, torch::Tensor running_var, double momentum, double eps) {
    switch (x.scalar_type()) {
        case torch::kFloat32: RESNET_BY_CHANNELS(float, forward_impl, x, w, b, s, running_mean, running_var, momentum, eps)
        case torch::kBFloat16: RESNET_BY_CHANNELS(uint16_t, forward_impl, x, w, b, s, running_mean, running_var, momentum, eps)
        case torch::kFloat64: return forward_impl<double, 0>(x, w, b, s, running_mean, running_var, momentum, eps);
        default: TORCH_CHECK(false, "bn_relu: unsupported dtype ", x.scalar_type());
    }
}

std::vector<torch::Tensor> backward(torch::Tensor gy, torch::Tensor y, torch::Tensor x, torch::Tensor mean,
                                    torch::Tensor invstd, torch::Tensor w, bool shortcut_grad) {
    switch (x.scalar_type()) {
        case torch::kFloat32: RESNET_BY_CHANNELS(float, backward_impl, gy, y, x, mean, invstd, w, shortcut_grad)
        case torch::kBFloat16: RESNET_BY_CHANNELS(uint16_t, backward_impl, gy, y, x, mean, invstd, w, shortcut_grad)
        case torch::kFloat64: return backward_impl<double, 0>(gy, y, x, mean, invstd, w, shortcut_grad);
        default: TORCH_CHECK(false, "bn_relu: unsupported dtype ", x.scalar_type());
    }
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.def("forward", &forward, "relu(BN(x) [+ s]) in training mode; returns y, mean, invstd");
    m.def("backward", &backward, "gradients of relu(BN(x) [+ s]): dx, dw, db, ds (ds undefined without s)");
}
