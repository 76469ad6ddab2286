//! A fresh Postgres database per test, dropped afterwards, on the server that
//! `SLUICE_TEST_POSTGRES_URL` names (default: the local one, as `.ci/run` provides it).

use sqlx::{Connection, PgConnection};

const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

fn admin_url() -> String {
    std::env::var("SLUICE_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned())
}

/// A database made for one test and dropped when the test is over.
#[derive(Debug)]
pub struct FreshDatabase {
    /// Connection URL of the new database.
    pub url: String,
    name: String,
}

impl FreshDatabase {
    pub async fn create() -> Self {
        let admin = admin_url();
        let mut conn = PgConnection::connect(&admin).await.unwrap_or_else(|e| {
            panic!(
                "these tests need Postgres at {admin} ({e}); .ci/run starts it, \
                 or point SLUICE_TEST_POSTGRES_URL at one"
            )
        });
        let name = format!("sluice_test_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .expect("CREATE DATABASE");
        let (base, _) = admin
            .rsplit_once('/')
            .expect("a database URL ends in /<database>");
        Self {
            url: format!("{base}/{name}"),
            name,
        }
    }
}

impl Drop for FreshDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop cannot await; a short-lived runtime on its own thread does the clean-up.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a current-thread runtime");
            rt.block_on(async {
                if let Ok(mut conn) = PgConnection::connect(&admin_url()).await {
                    let drop = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                    let _ = sqlx::query(&drop).execute(&mut conn).await;
                }
            });
        })
        .join();
    }
}
