//! `weir schedules …`: cron schedules on the master (create from a YAML file, pause with a
//! note, trigger now, backfill a range, describe with the next fire times and recent runs).

use std::path::PathBuf;

use anyhow::Context;
use weir_core::schedule::{parse_time, ScheduleSpec};
use weir_proto::convert;
use weir_proto::v1;

use crate::client::{explain, read_yaml, Client};
use crate::render;

/// `weir schedules`: what each verb takes.
#[derive(Debug, clap::Subcommand)]
pub enum SchedulesCommand {
    /// The schedules of a namespace (default: every namespace you may read).
    List {
        #[arg(long, short = 'n', default_value = "")]
        namespace: String,
    },
    /// One schedule: its spec, next fire times and recent runs.
    Describe {
        name: String,
        #[arg(long, short = 'n', default_value = weir_core::validate::DEFAULT_NAMESPACE)]
        namespace: String,
    },
    /// Create a schedule from a YAML or JSON file ("-": standard input).
    Create {
        file: PathBuf,
        /// Create it paused, with this note.
        #[arg(long)]
        paused: Option<String>,
    },
    /// Replace a schedule's spec from a file (its last slot and counters are kept).
    Update { file: PathBuf },
    /// Stop firing slots (those passing while paused are not caught up).
    Pause {
        name: String,
        #[arg(long, short = 'n', default_value = weir_core::validate::DEFAULT_NAMESPACE)]
        namespace: String,
        #[arg(long, default_value = "")]
        note: String,
    },
    Unpause {
        name: String,
        #[arg(long, short = 'n', default_value = weir_core::validate::DEFAULT_NAMESPACE)]
        namespace: String,
        #[arg(long, default_value = "")]
        note: String,
    },
    /// Delete a schedule (jobs it started are left to finish).
    Delete {
        name: String,
        #[arg(long, short = 'n', default_value = weir_core::validate::DEFAULT_NAMESPACE)]
        namespace: String,
    },
    /// Run it now, through its overlap policy.
    Trigger {
        name: String,
        #[arg(long, short = 'n', default_value = weir_core::validate::DEFAULT_NAMESPACE)]
        namespace: String,
    },
    /// One job per slot in [start, end] (RFC 3339); slots that already ran start nothing.
    Backfill {
        name: String,
        #[arg(long, short = 'n', default_value = weir_core::validate::DEFAULT_NAMESPACE)]
        namespace: String,
        #[arg(long)]
        start: String,
        #[arg(long)]
        end: String,
    },
}

fn wire_spec(file: &std::path::Path) -> anyhow::Result<v1::ScheduleSpec> {
    let spec: ScheduleSpec = read_yaml(file, "a valid schedule spec")?;
    convert::schedule_spec_to_wire(&spec).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))
}

impl Client {
    /// `weir schedules …`.
    pub async fn schedules(&mut self, command: SchedulesCommand) -> anyhow::Result<()> {
        let s = &mut self.schedules;
        let shown: Vec<v1::Schedule> = match command {
            SchedulesCommand::List { namespace } => {
                let r = s.list_schedules(v1::ListSchedulesRequest { namespace }).await.map_err(explain)?;
                let list = r.into_inner().schedules;
                if self.json {
                    list.iter().for_each(|x| println!("{}", render::schedule_value(x)));
                } else {
                    render::schedule_table(&list);
                }
                return Ok(());
            }
            SchedulesCommand::Describe { name, namespace } => {
                let r = s.describe_schedule(v1::DescribeScheduleRequest { namespace, name }).await;
                r.map_err(explain)?.into_inner().schedule.into_iter().collect()
            }
            SchedulesCommand::Create { file, paused } => {
                let req = v1::CreateScheduleRequest {
                    spec: Some(wire_spec(&file)?),
                    paused: paused.is_some(),
                    note: paused.unwrap_or_default(),
                };
                s.create_schedule(req).await.map_err(explain)?.into_inner().schedule.into_iter().collect()
            }
            SchedulesCommand::Update { file } => {
                let req = v1::UpdateScheduleRequest { spec: Some(wire_spec(&file)?) };
                s.update_schedule(req).await.map_err(explain)?.into_inner().schedule.into_iter().collect()
            }
            SchedulesCommand::Pause { name, namespace, note } => {
                let r = s.pause_schedule(v1::PauseScheduleRequest { namespace, name, note }).await;
                r.map_err(explain)?.into_inner().schedule.into_iter().collect()
            }
            SchedulesCommand::Unpause { name, namespace, note } => {
                let r = s.unpause_schedule(v1::UnpauseScheduleRequest { namespace, name, note }).await;
                r.map_err(explain)?.into_inner().schedule.into_iter().collect()
            }
            SchedulesCommand::Delete { name, namespace } => {
                let req = v1::DeleteScheduleRequest { namespace: namespace.clone(), name: name.clone() };
                s.delete_schedule(req).await.map_err(explain)?;
                if !self.json {
                    println!("schedule {namespace}/{name} deleted");
                }
                return Ok(());
            }
            SchedulesCommand::Trigger { name, namespace } => {
                let r = s.trigger_schedule(v1::TriggerScheduleRequest { namespace, name }).await.map_err(explain)?;
                let r = r.into_inner();
                if self.json {
                    println!("{}", serde_json::json!({"outcome": r.outcome, "job_id": r.job_id}));
                } else if r.job_id.is_empty() {
                    println!("{}", r.outcome);
                } else {
                    println!("{} {}", r.outcome, r.job_id);
                }
                return Ok(());
            }
            SchedulesCommand::Backfill { name, namespace, start, end } => {
                let start = parse_time("--start", &start).map_err(anyhow::Error::msg)?;
                let end = parse_time("--end", &end).map_err(anyhow::Error::msg)?;
                let req = v1::BackfillScheduleRequest {
                    namespace,
                    name,
                    start: Some(convert::timestamp(start)),
                    end: Some(convert::timestamp(end)),
                };
                let r = s.backfill_schedule(req).await.map_err(explain)?.into_inner();
                if self.json {
                    println!(
                        "{}",
                        serde_json::json!({"slots": r.slots, "started": r.started, "existing": r.existing, "job_ids": r.job_ids})
                    );
                } else {
                    println!("{} slots: {} started, {} already ran", r.slots, r.started, r.existing);
                }
                return Ok(());
            }
        };
        let one = shown.first().context("master returned no schedule")?;
        if self.json {
            println!("{}", render::schedule_value(one));
        } else {
            render::schedule_detail(one);
        }
        Ok(())
    }
}
