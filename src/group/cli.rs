//! `ringtail groups`: list and describe consumer groups.

#[derive(clap::Args, Debug)]
pub struct GroupsArgs {}

pub fn run(_args: GroupsArgs) -> anyhow::Result<()> {
    anyhow::bail!("groups is not built yet")
}
