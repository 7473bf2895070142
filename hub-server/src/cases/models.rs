//! The shadow comparison of candidate models for the web application: read from the
//! `shadow.json` the model task keeps, for the roles `policy::model_comparison` allows.

use std::path::PathBuf;

use crate::error::HubError;
use crate::models::shadow::ShadowReport;

use super::policy::{self, Action};
use super::{blocking, CaseService, Who};

impl CaseService {
    /// The latest comparison (None before the hub first wrote one); audited.
    pub async fn model_comparison(
        &self,
        who: &Who,
        path: PathBuf,
    ) -> Result<Option<ShadowReport>, HubError> {
        let action = Action::ModelComparison;
        if let Err(why) = policy::model_comparison(&who.caller) {
            return Err(self.deny(who, action, "", why).await);
        }
        let report = blocking(move || {
            crate::models::read_json::<ShadowReport>(&path).map_err(|e| {
                tracing::error!(error = %e, "reading the shadow comparison");
                HubError::Unavailable("the model comparison is unavailable".into())
            })
        })
        .await?;
        self.record(who, action, "shadow comparison", "allowed")
            .await?;
        Ok(report)
    }
}
