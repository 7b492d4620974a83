//! tally-bench: load generator and benchmark runner for tally.

mod args;
mod history;
mod nats;
mod peer;
mod report;
mod runner;
mod server;
mod summary;
mod ws;

use clap::Parser;

use args::{Args, Scenario};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let server = match (&args.target, &args.server_bin) {
        (Some(t), _) => server::Target::Running(t.trim_end_matches('/').to_string()),
        (None, Some(bin)) => {
            let extra: Vec<String> = match (args.scenario, &args.nats) {
                (Scenario::NatsCoreLlm, Some(url)) => vec!["--nats".into(), url.clone()],
                (Scenario::NatsJetstreamLlm, Some(url)) => vec![
                    "--nats".into(),
                    url.clone(),
                    "--nats-stream".into(),
                    "BENCH".into(),
                    "--nats-create-stream".into(),
                ],
                _ => Vec::new(),
            };
            server::Target::Spawned(Box::new(server::Spawned::start(bin, &extra).await?))
        }
        (None, None) => anyhow::bail!("give --target URL or --server-bin PATH"),
    };
    if let Scenario::NatsCoreLlm | Scenario::NatsJetstreamLlm = args.scenario {
        let url = args
            .nats
            .clone()
            .ok_or_else(|| anyhow::anyhow!("NATS scenarios need --nats URL"))?;
        let js = matches!(args.scenario, Scenario::NatsJetstreamLlm);
        let report = nats::run(
            server.url(),
            &url,
            js,
            args.concurrency,
            args.warmup,
            args.duration,
        )
        .await?;
        return finish(&args, &report);
    }
    if let Scenario::UsageSummary = args.scenario {
        let now_s = chrono::Utc::now().timestamp();
        let tally = summary::run(
            server.url(),
            args.events,
            args.queries,
            args.concurrency,
            now_s,
        )
        .await?;
        let postgres = peer::run(
            args.database_url.as_deref(),
            args.events,
            now_s,
            args.queries,
            args.concurrency,
            &tally,
        )
        .await;
        let report = serde_json::json!({"tally": tally, "postgres": postgres});
        return finish(&args, &report);
    }
    if let Scenario::HistoryVm | Scenario::HistoryLlm = args.scenario {
        let report = history::run(
            server.url(),
            matches!(args.scenario, Scenario::HistoryVm),
            args.phase == "load",
            args.events,
            args.vms,
            args.concurrency,
            args.queries,
        )
        .await?;
        return finish(&args, &report);
    }
    if let Scenario::WsClients = args.scenario {
        let pid = match &server {
            server::Target::Spawned(s) => s.pid(),
            server::Target::Running(_) => None,
        };
        let report = ws::run(server.url(), pid, args.clients, args.duration).await?;
        return finish(&args, &report);
    }
    let result = runner::run(&args, server.url()).await?;
    let server_stats = match server {
        server::Target::Spawned(s) => Some(s.stop(result.records_stored).await?),
        server::Target::Running(_) => None,
    };
    let report = report::Report::new(&args, result, server_stats);
    println!("{}", report.human());
    if let Some(out) = &args.out {
        std::fs::write(out, serde_json::to_vec_pretty(&report)?)?;
    }
    if report.errors_total() > 0 && report.records_acked == 0 {
        anyhow::bail!("no request succeeded");
    }
    Ok(())
}

fn finish(args: &Args, report: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(report)?);
    if let Some(out) = &args.out {
        std::fs::write(out, serde_json::to_vec_pretty(report)?)?;
    }
    Ok(())
}
