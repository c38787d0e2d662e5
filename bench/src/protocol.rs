//! `protocol`: challenge round trips through HTTP, Fernet and the actors, the model generating one
//! token, against the same generations submitted through the front door without the protocol:
//! the difference is the miner's own cost.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use loosh_actors::front_door::GenerationRequest;
use loosh_actors::settings::Hotkey;
use loosh_miner::client::validator::{challenge_body, ClientError, ValidatorClient};
use tokio::sync::Mutex;

use crate::load::{drive, stats};
use crate::miner::{bench_config, start, stop};

pub(crate) async fn protocol(model: PathBuf, levels: Vec<usize>, requests: usize, threads: i32) -> anyhow::Result<()> {
    let max_conc = levels.iter().copied().max().unwrap_or(1);
    let cfg = bench_config(&model, threads, max_conc * 2)?;
    let node = start(&cfg).await?;
    let door = &node.door;
    let url = format!("http://{}", node.addr);
    println!("protocol bench: {} challenges per level, 1 generated token each, model {}", requests, model.display());
    println!(
        "{:>5}  {:>28}  {:>28}  {:>10}",
        "conc", "front door, no protocol", "full miner (HTTP+Fernet)", "overhead"
    );
    for &conc in &levels {
        // Reference: the same generation submitted to the scheduler directly.
        let g = door.clone();
        let (lat, wall) = drive(requests, conc, move |_| {
            let g = g.clone();
            async move {
                let req = GenerationRequest::one_turn("Say hi", 1, Instant::now() + Duration::from_secs(50));
                g.generate(req).await.map(|_| ()).map_err(anyhow::Error::from)
            }
        })
        .await?;
        let direct = stats(lat, wall);

        // The miner: each connection is a validator with its own key, as on mainnet.
        let mut clients = Vec::new();
        for _ in 0..conc {
            let mut c = ValidatorClient::new(&url, Hotkey::ephemeral());
            c.handshake().await?;
            clients.push(Arc::new(Mutex::new(c)));
        }
        let clients = Arc::new(clients);
        let body = challenge_body("Say hi", 1, 0.7);
        // The tiny model's one token is sometimes empty, which the miner refuses with a 502
        // rather than send an empty 200 (SCORING.md): a full round trip all the same, counted.
        let empty = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = empty.clone();
        let (lat, wall) = drive(requests, conc, move |i| {
            let (clients, body, empty) = (clients.clone(), body.clone(), counted.clone());
            async move {
                let c = clients[i % clients.len()].clone();
                let c = c.lock().await;
                match c.challenge_once(&body).await {
                    Ok(_) => Ok(()),
                    Err(ClientError::Status { status: 502, body, .. }) if body.contains("empty answer") => {
                        empty.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        Ok(())
                    }
                    Err(e) => Err(e.into()),
                }
            }
        })
        .await?;
        let full = stats(lat, wall);
        let empty = empty.load(std::sync::atomic::Ordering::Relaxed);
        println!(
            "{conc:>5}  {:>8.0} rps p50 {:>5.2} p99 {:>6.2}  {:>8.0} rps p50 {:>5.2} p99 {:>6.2}  {:>+7.2} ms",
            direct.rps,
            direct.p50_ms,
            direct.p99_ms,
            full.rps,
            full.p50_ms,
            full.p99_ms,
            full.p50_ms - direct.p50_ms
        );
        if empty > 0 {
            println!("       ({empty} of the miner's answers were empty, refused with 502, timed as round trips)");
        }
    }
    println!("(latencies in ms; overhead = full p50 - direct p50)");
    stop(node).await;
    Ok(())
}
