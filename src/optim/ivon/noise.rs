//! Where IVON's draws come from: its own counter-based generator, which the fused kernel
//! draws from inside its pass and a data-parallel rank re-seeds, or a source of the
//! user's, which takes the unfused path.

use crate::noise::{NoiseSource, PhiloxNormal};
use crate::Result;

pub(super) enum Noise {
    /// The default generator.
    Philox(PhiloxNormal),
    /// A source given to [`super::Ivon::with_noise`].
    Custom(Box<dyn NoiseSource>),
}

impl Noise {
    /// The source, to draw from.
    pub(super) fn source(&mut self) -> &mut dyn NoiseSource {
        match self {
            Noise::Philox(p) => p,
            Noise::Custom(s) => s.as_mut(),
        }
    }

    /// The generator, when it is the default one.
    pub(super) fn philox(&mut self) -> Option<&mut PhiloxNormal> {
        match self {
            Noise::Philox(p) => Some(p),
            Noise::Custom(_) => None,
        }
    }

    /// The state, for a checkpoint; `None` for a source that cannot save one.
    pub(super) fn state(&self) -> Option<serde_json::Value> {
        match self {
            Noise::Philox(p) => p.state(),
            Noise::Custom(s) => s.state(),
        }
    }

    /// Restores a state from [`Self::state`].
    pub(super) fn load_state(&mut self, state: &serde_json::Value) -> Result<()> {
        self.source().load_state(state)
    }
}
