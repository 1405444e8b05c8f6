pub fn run(_lab: &super::state::Lab, _keep: bool, _opts: super::ops::UpOpts) -> anyhow::Result<()> { anyhow::bail!("demo: not yet") }
