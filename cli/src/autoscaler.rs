//! `sluice autoscaler`: the Kubernetes form's one autoscaler. Every replica of it hears the
//! gateways' load reports; the one holding the Lease decides each function's scale and sets it
//! on its Deployment, and a standby takes over when it stops.

use std::sync::Arc;

use anyhow::Context;
use sluice_autoscaler::AutoscalerConfig;
use sluice_autoscaler::shared::SharedAutoscaler;
use sluice_kube::lease::{LeaseConfig, campaign};
use sluice_kube::{KubeConfig, KubeProvider};
use sluice_store::{PgStore, open_postgres};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::AutoscalerArgs;
use crate::up::{retrying, serve_health};

/// Runs until SIGTERM or SIGINT; a leader hands its Lease back on the way out.
pub async fn run(args: AutoscalerArgs) -> anyhow::Result<()> {
    let scale_window = crate::checked_scale_window(args.scale_window)?;
    let shutdown = CancellationToken::new();
    tokio::spawn(crate::stop_on_signal(shutdown.clone()));
    let settings = args.kubernetes.settings()?;
    let client = KubeProvider::client(settings.kubeconfig.as_deref())
        .await
        .context("cannot reach Kubernetes")?;
    // Only Deployments are watched: the autoscaler reads and sets their scale, nothing else.
    let provider = KubeProvider::new(
        client.clone(),
        KubeConfig {
            namespace: settings.namespace.clone(),
            deployments_only: true,
            ..KubeConfig::default()
        },
    );
    provider
        .start(args.connect_timeout)
        .await
        .context("cannot follow the function namespace's Deployments")?;
    let pool = retrying(args.connect_timeout, || async {
        open_postgres(&args.database_url, 4)
            .await
            .context("cannot open the Postgres database (--database-url)")
    })
    .await?;
    let nats = retrying(args.connect_timeout, || async {
        sluice_nats::connect_client(&args.nats, args.connect_timeout)
            .await
            .context("cannot reach NATS (--nats)")
    })
    .await?;
    serve_health(args.listen, shutdown.clone()).await?;
    let functions = Arc::new(PgStore::new(pool));
    // Functions deployed to other namespaces (labelled openfaas=1) are watched once seen in
    // the registry.
    tokio::spawn({
        let (provider, functions, shutdown) =
            (provider.clone(), functions.clone(), shutdown.clone());
        async move {
            let mut every = tokio::time::interval(std::time::Duration::from_secs(10));
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    _ = every.tick() => {}
                }
                match sluice_core::FunctionStore::list(functions.as_ref()).await {
                    Ok(specs) => {
                        for spec in specs {
                            provider.follow_namespace(&spec.function.namespace);
                        }
                    }
                    Err(error) => {
                        tracing::warn!(%error, "cannot read the function registry's namespaces")
                    }
                }
            }
        }
    });

    let (leading_tx, leading) = watch::channel(false);
    let leases = kube::Api::namespaced(client, &args.lease_namespace);
    let election = tokio::spawn(campaign(
        leases,
        LeaseConfig::new(&args.lease_name, &args.identity),
        leading_tx,
        shutdown.clone(),
    ));
    let autoscaler = SharedAutoscaler::new(
        nats,
        Arc::new(provider.clone()),
        functions,
        AutoscalerConfig {
            max_replicas_limit: args.max_replicas,
            stable_window: scale_window,
            ..AutoscalerConfig::default()
        },
        leading,
    );
    tracing::info!(
        identity = %args.identity,
        lease = %args.lease_name,
        namespace = %settings.namespace,
        "autoscaler started; standing by for the lease"
    );
    autoscaler
        .run(shutdown.clone())
        .await
        .context("cannot subscribe to the gateways' reports")?;
    election.await.context("the election task panicked")?;
    provider.shutdown();
    tracing::info!("stopped");
    Ok(())
}
