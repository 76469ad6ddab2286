//! [`ManualAutoscaler`]: an [`Autoscaler`] that never scales, for tests that scale by hand.

use async_trait::async_trait;
use sluice_core::{Autoscaler, FunctionRef, ScaleStatus, ScalingGuard, Tracked};

/// Counts nothing and wakes nothing: a function at zero stays there (the activator then says
/// it cannot be woken).
#[derive(Debug, Default)]
pub struct ManualAutoscaler;

#[async_trait]
impl Autoscaler for ManualAutoscaler {
    fn track(&self, _: &FunctionRef) -> Tracked {
        Tracked::new(())
    }
    async fn wake(&self, _: &FunctionRef) -> bool {
        false
    }
    async fn exclusive(&self) -> ScalingGuard {
        Box::new(())
    }
    fn pin(&self, _: &FunctionRef, _: u32, _: &str) {}
    fn status(&self, _: &FunctionRef) -> Option<ScaleStatus> {
        None
    }
}
