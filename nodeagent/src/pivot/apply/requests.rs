//! Requests to the two clusters: where an object's API is, one request under the retry
//! policy, and a bounded number in flight.

use super::*;

impl<'a> Pivot<'a> {
    pub(super) async fn retry<T, F, Fut>(
        &self,
        what: impl Fn() -> String,
        mut f: F,
    ) -> Result<T, PivotError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, kube::Error>>,
    {
        let mut backoff = self.opts.retry.backoff();
        let mut attempt = 1;
        loop {
            self.check_lock()?;
            match f().await {
                Ok(v) => return Ok(v),
                Err(e) if transient(&e) && attempt < self.opts.retry.attempts => {
                    tracing::warn!(what = %what(), error = %chain(&e), attempt, "retrying");
                    tokio::time::sleep(backoff.next().unwrap_or(self.opts.retry.cap)).await;
                    attempt += 1;
                }
                Err(source) => {
                    return Err(PivotError::Request {
                        what: what(),
                        source,
                    });
                }
            }
        }
    }

    /// Runs `work` with `parallelism` in flight. After the first failure nothing new starts,
    /// but what is in flight finishes: a request dropped half-way may still land on the server
    /// after a rollback has looked, so no request is ever abandoned. Returns the first error.
    pub(super) async fn settle<T, Fut>(
        &self,
        work: impl Iterator<Item = Fut>,
    ) -> Result<Vec<T>, PivotError>
    where
        Fut: Future<Output = Result<T, PivotError>>,
    {
        let failed = AtomicBool::new(false);
        let failed = &failed;
        // Collected first: a stream over a closure (`Iterator::map`) held across an await makes
        // the future's `Send` depend on the closure being general over lifetimes, which the
        // compiler cannot prove (rust-lang/rust#102211).
        let work: Vec<_> = work
            .map(|fut| async move {
                if failed.load(Ordering::SeqCst) {
                    return None;
                }
                let r = fut.await;
                if r.is_err() {
                    failed.store(true, Ordering::SeqCst);
                }
                Some(r)
            })
            .collect();
        let results: Vec<Option<Result<T, PivotError>>> = futures::stream::iter(work)
            .buffer_unordered(self.opts.parallelism)
            .collect()
            .await;
        let mut out = Vec::new();
        let mut first = None;
        for r in results.into_iter().flatten() {
            match r {
                Ok(v) => out.push(v),
                Err(e) => {
                    first.get_or_insert(e);
                }
            }
        }
        match first {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }

    /// A JSON merge patch of `name`, retried like every request.
    pub(super) async fn merge(
        &self,
        api: &Api<DynamicObject>,
        name: &str,
        patch: &Value,
        what: impl Fn() -> String,
    ) -> Result<DynamicObject, PivotError> {
        self.retry(what, || async {
            api.patch(name, &PatchParams::default(), &Patch::Merge(patch))
                .await
        })
        .await
    }

    pub(super) fn api(&self, client: &kube::Client, ar: &ApiResource) -> Api<DynamicObject> {
        Api::namespaced_with(client.clone(), self.namespace, ar)
    }

    /// The API of a member where it lives: the namespace moved, or (a global identity and its
    /// Secret) cluster-wide or the provider's namespace.
    pub(super) fn member_api(
        &self,
        client: &kube::Client,
        graph: &Graph,
        o: &ObjRef,
    ) -> Api<DynamicObject> {
        let ar = graph.resource(o).expect("members' types are listed");
        match graph.location(&o.uid) {
            Some(None) => Api::all_with(client.clone(), ar),
            Some(Some(ns)) => Api::namespaced_with(client.clone(), ns, ar),
            None => self.api(client, ar),
        }
    }
}
