//! tally-bench: load generator and benchmark runner for tally.

mod args;
mod budgets;
mod history;
mod llm_events;
mod meters;
mod nats;
mod peer;
mod report;
mod runner;
mod secure;
mod server;
mod summary;
mod ws;

use clap::Parser;

use args::{Args, Scenario};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.secure_ab {
        return secure_ab(&args).await;
    }
    if let Scenario::NatsCoreCeiling = args.scenario {
        let url = args
            .nats
            .clone()
            .ok_or_else(|| anyhow::anyhow!("NATS scenarios need --nats URL"))?;
        let report = nats::ceiling(&url, &nats_load(&args, false)).await?;
        return finish(&args, &report);
    }
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
        let report = nats::run(server.url(), server.pid(), &url, &nats_load(&args, js)).await?;
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
            &args.phase,
            args.events,
            args.vms,
            args.concurrency,
            args.queries,
        )
        .await?;
        return finish(&args, &report);
    }
    if let Scenario::Meters = args.scenario {
        let report = meters::run(
            server.url(),
            &args.phase,
            args.events,
            args.span_hours,
            args.concurrency,
            args.queries,
        )
        .await?;
        return finish(&args, &report);
    }
    if let Scenario::BudgetCheck = args.scenario {
        let report = budgets::run(
            server.url(),
            args.budgets,
            args.events,
            args.queries,
            args.concurrency,
            args.database_url.as_deref(),
        )
        .await?;
        return finish(&args, &report);
    }
    if let Scenario::WsClients = args.scenario {
        let report = ws::run(server.url(), server.pid(), args.clients, args.duration).await?;
        return finish(&args, &report);
    }
    let result = runner::run(&args, server.url(), server.pid()).await?;
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

fn nats_load(args: &Args, jetstream: bool) -> nats::Load {
    nats::Load {
        jetstream,
        publishers: args.concurrency,
        rate: args.rate,
        unacked: args.js_unacked,
        warmup: args.warmup,
        duration: args.duration,
    }
}

fn finish(args: &Args, report: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(report)?);
    if let Some(out) = &args.out {
        std::fs::write(out, serde_json::to_vec_pretty(report)?)?;
    }
    Ok(())
}

/// The scenario on a plain server, then on one with TLS and a token.
async fn secure_ab(args: &Args) -> anyhow::Result<()> {
    let bin = args
        .server_bin
        .as_deref()
        .ok_or_else(|| anyhow::anyhow!("--secure-ab needs --server-bin"))?;
    let plain_server = server::Spawned::start(bin, &[]).await?;
    let plain = runner::run(args, &plain_server.url, None).await?;
    let plain_stats = plain_server.stop(plain.records_stored).await?;
    let plain = report::Report::new(args, plain, Some(plain_stats));

    let pki = tempfile::tempdir()?;
    let (ca, cert, key) = secure::certificates(pki.path())?;
    let data = tempfile::tempdir()?;
    let credentials = secure::Credentials {
        ca_pem: std::fs::read(&ca)?,
        token: secure::ingest_token(bin, &data.path().join("data"))?,
    };
    let extra: Vec<String> = vec![
        "--tls-cert".into(),
        cert.display().to_string(),
        "--tls-key".into(),
        key.display().to_string(),
    ];
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&credentials.ca_pem)?)
        .build()?;
    let secured_server = server::Spawned::start_in(bin, &extra, data, "https", &client).await?;
    let secured = runner::run_with(args, &secured_server.url, Some(&credentials), None).await?;
    let secured_stats = secured_server.stop(secured.records_stored).await?;
    let secured = report::Report::new(args, secured, Some(secured_stats));
    let ratio = secured.records_per_second / plain.records_per_second.max(1e-9);
    eprintln!(
        "plain {:.0} records/s, TLS + token {:.0} records/s: {:.3}x",
        plain.records_per_second, secured.records_per_second, ratio
    );
    finish(
        args,
        &serde_json::json!({"plain": plain, "tls_and_token": secured, "throughput_ratio": ratio}),
    )
}
