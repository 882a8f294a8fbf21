//! Broker start-up.

pub fn run(_config: crate::config::Config) -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}
