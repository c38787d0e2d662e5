//! `metagraph`: the time and memory of a metagraph sync of N neurons written into a local chain,
//! against one plain head read on the same connection.

use std::time::Instant;

use loosh_actors::settings::Hotkey;

pub(crate) async fn metagraph(url: String, neurons: u16, runs: usize, netuid: u16) -> anyhow::Result<()> {
    use loosh_actors::chain::client::ChainClient;
    use serde_json::json;
    let chain = ChainClient::connect(&url).await?;
    // Write a subnet of `neurons` neurons straight into the chain's state.
    let hotkeys: Vec<Hotkey> = (0..neurons).map(|_| Hotkey::ephemeral()).collect();
    let keys: Vec<_> = hotkeys.iter().enumerate().map(|(uid, h)| json!([[netuid, uid], h.ss58()])).collect();
    let uids: Vec<_> = hotkeys.iter().enumerate().map(|(uid, h)| json!([[netuid, h.ss58()], uid])).collect();
    let alpha: Vec<_> =
        hotkeys.iter().enumerate().map(|(uid, h)| json!([[h.ss58(), netuid], 1_000_000_000u64 * uid as u64])).collect();
    let permits: Vec<bool> = (0..neurons).map(|uid| uid < 64).collect();
    let incentive: Vec<u16> = (0..neurons).map(|uid| uid.wrapping_mul(97)).collect();
    chain
        .raw_request(
            "dev_setStorage",
            json!([{"SubtensorModule": {
                "SubnetworkN": [[[netuid], neurons]],
                "Keys": keys, "Uids": uids, "TotalHotkeyAlpha": alpha,
                "ValidatorPermit": [[[netuid], permits]],
                "Incentive": [[[netuid], incentive]],
            }}]),
        )
        .await?;
    let _ = chain.metagraph(netuid).await?; // warm the connection and metadata caches
    let before = rss_kib();
    let (mut syncs, mut reads) = (Vec::new(), Vec::new());
    let mut size = 0;
    for _ in 0..runs {
        let t = Instant::now();
        let graph = chain.metagraph(netuid).await?;
        syncs.push(t.elapsed());
        anyhow::ensure!(graph.len() == usize::from(neurons), "read {} neurons, wrote {neurons}", graph.len());
        size = graph.iter().map(|n| std::mem::size_of_val(n) + n.hotkey.len()).sum::<usize>();
        let t = Instant::now();
        chain.block_number().await?;
        reads.push(t.elapsed());
    }
    syncs.sort();
    reads.sort();
    println!("metagraph sync of {neurons} neurons on the local chain, {runs} runs:");
    println!(
        "  sync: median {:.1} ms (min {:.1}, max {:.1})",
        syncs[runs / 2].as_secs_f64() * 1e3,
        syncs[0].as_secs_f64() * 1e3,
        syncs[runs - 1].as_secs_f64() * 1e3
    );
    println!("  reference, one head read: median {:.2} ms", reads[runs / 2].as_secs_f64() * 1e3);
    println!("  metagraph held: {size} bytes; process RSS {} KiB -> {} KiB across the syncs", before, rss_kib());
    Ok(())
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("VmRSS:").and_then(|v| v.trim().trim_end_matches(" kB").parse().ok()))
        })
        .unwrap_or(0)
}
