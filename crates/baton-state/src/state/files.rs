//! Secrets and configs: immutable named values that tasks mount as files.
//!
//! Both are refused when invalid or too large, never replaced (rotating a
//! secret means a new name and a job update), and never removed while a job
//! uses them. A job that names one that does not exist is refused.

use baton_spec::{FileKind, TaskSpec, file_name_problem, file_size_problem};

use super::State;
use crate::command::Event;
use crate::ids::Timestamp;
use crate::objects::{ConfigEntry, JobDesired, SecretEntry};
use crate::secret::SecretBytes;
use crate::state::ApplyError;

impl State {
    /// All secrets, by name (values included: never show them).
    pub fn secrets(&self) -> impl Iterator<Item = &SecretEntry> {
        self.secrets.values()
    }

    /// One secret.
    pub fn secret(&self, name: &str) -> Option<&SecretEntry> {
        self.secrets.get(name)
    }

    /// All configs, by name.
    pub fn configs(&self) -> impl Iterator<Item = &ConfigEntry> {
        self.configs.values()
    }

    /// One config.
    pub fn config(&self, name: &str) -> Option<&ConfigEntry> {
        self.configs.get(name)
    }

    fn file_exists(&self, kind: FileKind, name: &str) -> bool {
        match kind {
            FileKind::Secret => self.secrets.contains_key(name),
            FileKind::Config => self.configs.contains_key(name),
        }
    }

    /// The jobs that use the secret or config `name`, by name: those meant
    /// to run whose spec names it, and stopped ones whose tasks have not all
    /// ended yet.
    pub fn jobs_using(&self, kind: FileKind, name: &str) -> Vec<&str> {
        self.jobs
            .values()
            .filter(|job| job.spec.task.file_names(kind).contains(name))
            .filter(|job| {
                job.desired == JobDesired::Run
                    || self.tasks_of_job(&job.name).any(|task| task.is_active())
            })
            .map(|job| job.name.as_str())
            .collect()
    }

    /// Refuses a task spec that names a secret or config that does not exist.
    pub(super) fn check_files_exist(&self, task: &TaskSpec) -> Result<(), ApplyError> {
        let missing: Vec<(FileKind, String)> = [FileKind::Secret, FileKind::Config]
            .into_iter()
            .flat_map(|kind| {
                task.file_names(kind)
                    .into_iter()
                    .filter(move |name| !self.file_exists(kind, name))
                    .map(move |name| (kind, name.to_owned()))
            })
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(ApplyError::MissingFiles { missing })
        }
    }

    fn check_new_file(&self, kind: FileKind, name: &str, len: usize) -> Result<(), ApplyError> {
        if let Some(problem) = file_name_problem(name).or_else(|| file_size_problem(len)) {
            return Err(ApplyError::InvalidFile {
                kind,
                problem: format!("{name:?} {problem}"),
            });
        }
        if self.file_exists(kind, name) {
            return Err(ApplyError::FileExists {
                kind,
                name: name.to_owned(),
            });
        }
        Ok(())
    }

    pub(super) fn create_secret(
        &mut self,
        name: String,
        value: SecretBytes,
        now: Timestamp,
    ) -> Result<Vec<Event>, ApplyError> {
        self.check_new_file(FileKind::Secret, &name, value.len())?;
        self.secrets.insert(
            name.clone(),
            SecretEntry {
                name: name.clone(),
                value,
                created_at: now,
            },
        );
        Ok(vec![Event::FileCreated {
            kind: FileKind::Secret,
            name,
        }])
    }

    pub(super) fn create_config(
        &mut self,
        name: String,
        data: Vec<u8>,
        now: Timestamp,
    ) -> Result<Vec<Event>, ApplyError> {
        self.check_new_file(FileKind::Config, &name, data.len())?;
        self.configs.insert(
            name.clone(),
            ConfigEntry {
                name: name.clone(),
                data,
                created_at: now,
            },
        );
        Ok(vec![Event::FileCreated {
            kind: FileKind::Config,
            name,
        }])
    }

    pub(super) fn remove_file(
        &mut self,
        kind: FileKind,
        name: String,
    ) -> Result<Vec<Event>, ApplyError> {
        if !self.file_exists(kind, &name) {
            return Err(ApplyError::FileNotFound { kind, name });
        }
        let jobs = self.jobs_using(kind, &name);
        if !jobs.is_empty() {
            let jobs = jobs.into_iter().map(str::to_owned).collect();
            return Err(ApplyError::FileInUse { kind, name, jobs });
        }
        match kind {
            FileKind::Secret => self.secrets.remove(&name).map(drop),
            FileKind::Config => self.configs.remove(&name).map(drop),
        };
        Ok(vec![Event::FileRemoved { kind, name }])
    }
}
