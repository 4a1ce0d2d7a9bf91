//! The model builder: [`ArchSpec`] → Burn model. Every layer is wrapped
//! pre-norm residual, `x ← x + layer(norm(x))`, inside one of two backbones
//! (mad-protocol §2.2, §1.5):
//! - language model: embedding N(0, 0.02) (a preset may change the std:
//!   [`ModelInit`]), no positional embedding, layers,
//!   final norm, untied linear head with bias;
//! - autoencoder (compression): the same encoder, the hidden state at the last
//!   position plus a sinusoidal position embedding decoded at every position by
//!   two `norm → Linear(d, d) → GELU` layers, then `norm → Linear(d, V)`.

use burn::nn::{Embedding, Linear};
use burn::prelude::*;
use burn::tensor::TensorData;
use burn::tensor::activation::gelu;

use super::Init;
use super::attention::Attention;
use super::channel::{Mlp, MoeMlp, SwiGlu};
use super::deltanet::GatedDeltaNet;
use super::gated_conv::GatedShortConv;
use super::gla::GatedLinearAttention;
use super::hyena::Hyena;
use super::hyena_experts::HyenaExperts;
use super::linear_attention::LinearAttention;
use super::mamba::Mamba;
use super::mamba2::Mamba2;
use super::mh_hyena::MhHyena;
use super::norm::Norm;
use super::ops::{fit, linear};
use crate::genome::{ArchSpec, Backbone, Context, GenomeError, Layer};

/// What a preset may change in a model's initialisation (everything else
/// is the protocol's, per primitive).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ModelInit {
    /// Standard deviation of the token embedding, N(0, std²) (protocol 0.02).
    pub embedding_std: f64,
}

impl Default for ModelInit {
    fn default() -> ModelInit {
        ModelInit {
            embedding_std: crate::space::PROTOCOL_EMBEDDING_STD,
        }
    }
}

/// One built layer.
#[derive(Module, Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Mixer<B: Backend> {
    /// Softmax attention (global or sliding).
    Attention(Attention<B>),
    /// Linear attention.
    LinearAttention(LinearAttention<B>),
    /// Gated linear attention.
    GatedLinearAttention(GatedLinearAttention<B>),
    /// Hyena.
    Hyena(Hyena<B>),
    /// Multi-head Hyena.
    MhHyena(MhHyena<B>),
    /// Hyena experts.
    HyenaExperts(HyenaExperts<B>),
    /// Mamba.
    Mamba(Mamba<B>),
    /// Mamba-2.
    Mamba2(Mamba2<B>),
    /// Gated short convolution.
    GatedShortConv(GatedShortConv<B>),
    /// Gated DeltaNet.
    GatedDeltaNet(GatedDeltaNet<B>),
    /// SwiGLU.
    SwiGlu(SwiGlu<B>),
    /// MLP.
    Mlp(Mlp<B>),
    /// Mixture of experts.
    MoeMlp(MoeMlp<B>),
}

impl<B: Backend> Mixer<B> {
    /// Builds `layer` at width `d` for sequences up to `seq_len`.
    pub fn new(layer: &Layer, d: usize, seq_len: usize, init: &mut Init<'_, B>) -> Mixer<B> {
        match layer {
            Layer::Attention(s) => Mixer::Attention(Attention::new(s, d, init)),
            Layer::LinearAttention(s) => Mixer::LinearAttention(LinearAttention::new(s, d, init)),
            Layer::GatedLinearAttention(s) => {
                Mixer::GatedLinearAttention(GatedLinearAttention::new(s, d, init))
            }
            Layer::Hyena(s) => Mixer::Hyena(Hyena::new(s, d, seq_len, init)),
            Layer::MhHyena(s) => Mixer::MhHyena(MhHyena::new(s, d, seq_len, init)),
            Layer::HyenaExperts(s) => Mixer::HyenaExperts(HyenaExperts::new(s, d, seq_len, init)),
            Layer::Mamba(s) => Mixer::Mamba(Mamba::new(s, d, init)),
            Layer::Mamba2(s) => Mixer::Mamba2(Mamba2::new(s, d, init)),
            Layer::GatedShortConv(s) => Mixer::GatedShortConv(GatedShortConv::new(s, d, init)),
            Layer::GatedDeltaNet(s) => Mixer::GatedDeltaNet(GatedDeltaNet::new(s, d, init)),
            Layer::SwiGlu(s) => Mixer::SwiGlu(SwiGlu::new(s, d, init)),
            Layer::Mlp(s) => Mixer::Mlp(Mlp::new(s, d, init)),
            Layer::MoeMlp(s) => Mixer::MoeMlp(MoeMlp::new(s, d, init)),
        }
    }

    /// # Shapes
    /// - x: `[batch, seq, d]` → `[batch, seq, d]`
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        match self {
            Mixer::Attention(m) => m.forward(x),
            Mixer::LinearAttention(m) => m.forward(x),
            Mixer::GatedLinearAttention(m) => m.forward(x),
            Mixer::Hyena(m) => m.forward(x),
            Mixer::MhHyena(m) => m.forward(x),
            Mixer::HyenaExperts(m) => m.forward(x),
            Mixer::Mamba(m) => m.forward(x),
            Mixer::Mamba2(m) => m.forward(x),
            Mixer::GatedShortConv(m) => m.forward(x),
            Mixer::GatedDeltaNet(m) => m.forward(x),
            Mixer::SwiGlu(m) => m.forward(x),
            Mixer::Mlp(m) => m.forward(x),
            Mixer::MoeMlp(m) => m.forward(x),
        }
    }
}

/// `x + mixer(norm(x))`.
#[derive(Module, Debug)]
pub struct Residual<B: Backend> {
    /// The pre-norm.
    pub norm: Norm<B>,
    /// The layer.
    pub mixer: Mixer<B>,
}

impl<B: Backend> Residual<B> {
    /// # Shapes
    /// - x: `[batch, seq, d]` → `[batch, seq, d]`
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        x.clone() + self.mixer.forward(self.norm.forward(x))
    }
}

/// The decoder of the compression autoencoder.
#[derive(Module, Debug)]
pub struct Decoder<B: Backend> {
    /// Norm before the first decoder layer.
    pub norm1: Norm<B>,
    /// First decoder layer, `[d, d]` with bias.
    pub l1: Linear<B>,
    /// Norm before the second decoder layer.
    pub norm2: Norm<B>,
    /// Second decoder layer, `[d, d]` with bias.
    pub l2: Linear<B>,
}

/// A model built from a genome.
#[derive(Module, Debug)]
pub struct Model<B: Backend> {
    /// Token embedding `[vocab, d]`.
    pub embedding: Embedding<B>,
    /// The layers.
    pub layers: Vec<Residual<B>>,
    /// The autoencoder's decoder (compression backbone only).
    pub decoder: Option<Decoder<B>>,
    /// Final norm.
    pub norm: Norm<B>,
    /// Output head `[d, vocab]` with bias.
    pub head: Linear<B>,
}

impl<B: Backend> Model<B> {
    /// Builds `spec` for `ctx` (vocabulary, sequence length) with initial
    /// weights drawn from `seed`.
    ///
    /// Any sequence of valid layers builds; the block grammar is the search
    /// space's business, not the builder's.
    ///
    /// # Errors
    /// The genome's validation error, before anything is allocated.
    pub fn new(
        spec: &ArchSpec,
        ctx: Context,
        seed: u64,
        device: &B::Device,
    ) -> Result<Model<B>, GenomeError> {
        Model::with_init(spec, ctx, seed, ModelInit::default(), device)
    }

    /// As [`Model::new`], with the initialisation's departures from the
    /// protocol in `options`.
    ///
    /// # Errors
    /// The genome's validation error, before anything is allocated.
    pub fn with_init(
        spec: &ArchSpec,
        ctx: Context,
        seed: u64,
        options: ModelInit,
        device: &B::Device,
    ) -> Result<Model<B>, GenomeError> {
        spec.validate_layers()?;
        let d = spec.d_model;
        let mut init = Init::<B>::new(seed, device);
        let embedding = Embedding {
            weight: init.normal([ctx.vocab, d], options.embedding_std),
        };
        let layers = spec
            .layers
            .iter()
            .map(|l| Residual {
                norm: Norm::new(spec.norm, d, &mut init),
                mixer: Mixer::new(l, d, ctx.seq_len, &mut init),
            })
            .collect();
        let (decoder, head) = match spec.backbone {
            Backbone::LanguageModel => (None, init.linear(d, ctx.vocab, true)),
            Backbone::AutoEncoder => (
                Some(Decoder {
                    norm1: Norm::new(spec.norm, d, &mut init),
                    l1: init.linear_normal(d, d, true, 0.02),
                    norm2: Norm::new(spec.norm, d, &mut init),
                    l2: init.linear_normal(d, d, true, 0.02),
                }),
                init.linear_normal(d, ctx.vocab, true, 0.02),
            ),
        };
        Ok(Model {
            embedding,
            layers,
            decoder,
            norm: Norm::new(spec.norm, d, &mut init),
            head,
        })
    }

    /// The hidden states after the layers (before the final norm).
    ///
    /// # Shapes
    /// - tokens: `[batch, seq]` → `[batch, seq, d]`
    pub fn encode(&self, tokens: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        self.layers
            .iter()
            .fold(self.embedding.forward(tokens), |x, layer| layer.forward(x))
    }

    /// Logits at every position.
    ///
    /// # Shapes
    /// - tokens: `[batch, seq]` → `[batch, seq, vocab]`
    pub fn forward(&self, tokens: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let h = self.encode(tokens);
        let h = match &self.decoder {
            None => h,
            Some(dec) => {
                let [batch, seq, d] = h.dims();
                let z = h.slice([0..batch, seq - 1..seq, 0..d]);
                let full = [batch, seq, d];
                let device = dec.l1.weight.device();
                let pe = super::consts::cached("sinusoidal", &[seq, d], &device, || {
                    sinusoidal::<B>(seq, d, &device)
                });
                let x = fit(z, full) + fit(pe, full);
                let x = gelu(linear(&dec.l1, dec.norm1.forward(x)));
                gelu(linear(&dec.l2, dec.norm2.forward(x)))
            }
        };
        linear(&self.head, self.norm.forward(h))
    }
}

/// The transformer's sinusoidal position embedding:
/// `pe[p, 2i] = sin(p / 10000^(2i/d))`, `pe[p, 2i+1] = cos(...)`.
///
/// # Shapes
/// - output: `[1, seq, d]`
pub fn sinusoidal<B: Backend>(seq: usize, d: usize, device: &B::Device) -> Tensor<B, 3> {
    let v: Vec<f32> = (0..seq * d)
        .map(|i| {
            let (p, j) = ((i / d) as f64, i % d);
            let freq = 10000f64.powf(-((j - j % 2) as f64) / d as f64);
            (if j % 2 == 0 {
                (p * freq).sin()
            } else {
                (p * freq).cos()
            }) as f32
        })
        .collect();
    Tensor::from_data(TensorData::new(v, [1, seq, d]), device)
}
