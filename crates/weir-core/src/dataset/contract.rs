//! Schema contracts: how an input whose columns or values differ from a sink's schema
//! lands, and the one plan an input is written with across every sink of its step.
//!
//! Per sink (`schema_contract` in its config; dlt's vocabulary where it fits):
//! - `columns` — a column the sink does not have: `evolve` (default: add it, nullable),
//!   `freeze` (refuse the input, naming the column), `discard_value` (drop the column for
//!   that sink) or `quarantine` (rows holding a value in it go to the quarantine);
//! - `data_type` — a value that does not fit its column's type: `quarantine` (default:
//!   the row goes to the quarantine with its reason), `freeze` (refuse the input),
//!   `discard_value` (write null instead) or `widen` (widen the column to a type the
//!   input's values fit, recorded as a new version).
//!
//! A row lands in every sink of its step or in none: [`agree`] types each column once for
//! all sinks (the narrowest type every sink's column takes without loss), and a row any
//! sink refuses is quarantined for all of them.

use serde::{Deserialize, Serialize};

use super::schema::{Change, Column, ColumnType, Partition, Schema};

/// What a column the sink does not have does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ColumnPolicy {
    #[default]
    Evolve,
    Freeze,
    DiscardValue,
    /// dlt's `discard_row`: Weir keeps every row it does not land, in the quarantine.
    #[serde(alias = "discard_row")]
    Quarantine,
}

/// What a value that does not fit its column's type does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TypePolicy {
    #[default]
    #[serde(alias = "discard_row")]
    Quarantine,
    Freeze,
    DiscardValue,
    Widen,
}

impl ColumnPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            ColumnPolicy::Evolve => "evolve",
            ColumnPolicy::Freeze => "freeze",
            ColumnPolicy::DiscardValue => "discard_value",
            ColumnPolicy::Quarantine => "quarantine",
        }
    }
}

impl TypePolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            TypePolicy::Quarantine => "quarantine",
            TypePolicy::Freeze => "freeze",
            TypePolicy::DiscardValue => "discard_value",
            TypePolicy::Widen => "widen",
        }
    }
}

/// A sink's schema contract; the defaults evolve new columns and quarantine misfits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SchemaContract {
    pub columns: ColumnPolicy,
    pub data_type: TypePolicy,
}

/// What a value that does not fit its column does to its row, once the sinks agreed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Misfit {
    /// The value becomes null (counted in the report).
    Discard,
    /// The row goes to the quarantine.
    Quarantine,
    /// The whole input is refused.
    Refuse,
}

impl From<TypePolicy> for Misfit {
    fn from(p: TypePolicy) -> Misfit {
        match p {
            TypePolicy::DiscardValue => Misfit::Discard,
            TypePolicy::Quarantine | TypePolicy::Widen => Misfit::Quarantine,
            TypePolicy::Freeze => Misfit::Refuse,
        }
    }
}

/// A column of the input, as typed (inferred or declared) before reconciliation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputColumn {
    pub name: String,
    pub kind: ColumnType,
    pub nullable: bool,
}

/// One sink as the planner sees it.
#[derive(Debug, Clone, Copy)]
pub struct SinkView<'a> {
    /// The sink in messages: `parquet /lake/trades`, `postgres public.trades`.
    pub name: &'a str,
    /// Its schema now; `None` for a sink not written yet.
    pub current: Option<&'a Schema>,
    pub contract: SchemaContract,
    /// The partition column its config names (Parquet datasets).
    pub partition_by: Option<&'a str>,
}

/// How one sink takes the input.
#[derive(Debug, Clone, PartialEq)]
pub struct SinkPlan {
    /// The sink's schema once the input lands.
    pub schema: Schema,
    /// What the input changes (empty: nothing, no new version).
    pub changes: Vec<Change>,
    /// Input columns this sink drops (`columns: discard_value`).
    pub discarded: Vec<String>,
}

/// One column every row of the input is typed into.
#[derive(Debug, Clone, PartialEq)]
pub struct WriteColumn {
    pub name: String,
    pub kind: ColumnType,
    pub nullable: bool,
    /// The input column holding its values (index into the input); `None`: all null.
    pub input: Option<usize>,
    /// What a value that does not fit `kind` does.
    pub misfit: Misfit,
    /// The sink and contract that decided `misfit`, for messages.
    pub misfit_by: String,
    /// Wider types some sink holds the column as: each value must coerce to them too.
    pub also: Vec<ColumnType>,
}

/// How one input is written: its columns typed once, and each sink's share.
#[derive(Debug, Clone, PartialEq)]
pub struct WritePlan {
    pub columns: Vec<WriteColumn>,
    /// Input columns whose non-null values quarantine their row, with the reason.
    pub quarantine_if_present: Vec<(usize, String)>,
    /// Input columns no sink keeps, with the reason.
    pub discarded: Vec<(String, String)>,
    /// Per sink, in the step's order.
    pub sinks: Vec<SinkPlan>,
}

impl WritePlan {
    /// The plan when there is no sink to reconcile with: the input's columns as typed.
    pub fn of_input(input: &[InputColumn]) -> WritePlan {
        let columns = input
            .iter()
            .enumerate()
            .map(|(i, c)| WriteColumn {
                name: c.name.clone(),
                kind: c.kind,
                nullable: c.nullable,
                input: Some(i),
                misfit: Misfit::Quarantine,
                misfit_by: "the input's schema".into(),
                also: vec![],
            })
            .collect();
        WritePlan { columns, quarantine_if_present: vec![], discarded: vec![], sinks: vec![] }
    }

    /// The plan of a step with sinks: each sink planned by [`plan_sink`], then [`agree`]d.
    pub fn for_sinks(sinks: &[SinkView], input: &[InputColumn]) -> Result<WritePlan, String> {
        let plans = sinks.iter().map(|s| plan_sink(s, input)).collect::<Result<Vec<_>, _>>()?;
        agree(sinks, plans, input)
    }
}

/// How one sink takes the input under its contract; the error says why it refuses it.
pub fn plan_sink(sink: &SinkView, input: &[InputColumn]) -> Result<SinkPlan, String> {
    let find = |name: &str| input.iter().find(|c| c.name == name);
    let Some(current) = sink.current else {
        let columns: Vec<Column> =
            input.iter().map(|c| Column { name: c.name.clone(), kind: c.kind, nullable: c.nullable }).collect();
        let partition = match sink.partition_by {
            None => None,
            Some(p) => match columns.iter().find(|c| c.name == p) {
                Some(c) => Some(Partition::new(p, c.kind)),
                None => {
                    return Err(format!("{}: partition_by names column {p:?}, which the data does not have", sink.name))
                }
            },
        };
        return Ok(SinkPlan {
            schema: Schema { columns, partition },
            changes: vec![Change::Created],
            discarded: vec![],
        });
    };
    match (&current.partition, sink.partition_by) {
        (Some(p), Some(want)) if p.column == want => {}
        (None, None) => {}
        (Some(p), want) => {
            return Err(format!(
                "{} is partitioned by {:?} (folders {}=…) and the sink says {}: a dataset keeps the partitioning it was created with",
                sink.name,
                p.column,
                p.folder,
                want.map_or("no partition_by".to_string(), |w| format!("partition_by {w:?}"))
            ))
        }
        (None, Some(want)) => {
            return Err(format!(
                "{} is not partitioned and the sink says partition_by {want:?}: a dataset keeps the partitioning it was created with",
                sink.name
            ))
        }
    }
    let mut schema = current.clone();
    let mut changes = Vec::new();
    for col in &mut schema.columns {
        match find(&col.name) {
            Some(ic) if sink.contract.data_type == TypePolicy::Widen && !ic.kind.coerces_to(col.kind) => {
                let to = col.kind.join(ic.kind);
                if current.partition.as_ref().is_some_and(|p| p.column == col.name) {
                    return Err(format!(
                        "{}: column {:?} is {} in the input and partitions the dataset as {}; a partition column is never widened",
                        sink.name, col.name, ic.kind, col.kind
                    ));
                }
                changes.push(Change::Widened { column: col.name.clone(), from: col.kind, to });
                col.kind = to;
            }
            Some(_) => {}
            None if !col.nullable => {
                return Err(format!(
                    "{} requires column {:?} (not nullable), which the input does not have",
                    sink.name, col.name
                ))
            }
            None => {}
        }
    }
    let new: Vec<&InputColumn> = input.iter().filter(|c| current.column(&c.name).is_none()).collect();
    let mut discarded = Vec::new();
    match sink.contract.columns {
        ColumnPolicy::Evolve => {
            for c in new {
                schema.columns.push(Column { name: c.name.clone(), kind: c.kind, nullable: true });
                changes.push(Change::Added { column: c.name.clone(), kind: c.kind });
            }
        }
        ColumnPolicy::Freeze if !new.is_empty() => {
            let names: Vec<String> = new.iter().map(|c| format!("{:?}", c.name)).collect();
            let missing: Vec<String> =
                current.columns.iter().filter(|c| find(&c.name).is_none()).map(|c| format!("{:?}", c.name)).collect();
            let mut m = format!(
                "{} has a frozen schema (schema_contract.columns: freeze) and the input brings column{} {} it does not have",
                sink.name,
                if names.len() == 1 { "" } else { "s" },
                names.join(", ")
            );
            if !missing.is_empty() {
                m.push_str(&format!(
                    "; the input lacks the sink's column{} {}: renamed {} → {}?",
                    if missing.len() == 1 { "" } else { "s" },
                    missing.join(", "),
                    missing.join(", "),
                    names.join(", ")
                ));
            }
            return Err(m);
        }
        ColumnPolicy::Freeze => {}
        ColumnPolicy::DiscardValue | ColumnPolicy::Quarantine => {
            discarded = new.iter().map(|c| c.name.clone()).collect()
        }
    }
    Ok(SinkPlan { schema, changes, discarded })
}

/// Types each column once for all sinks and gives each sink its share; the error names
/// two sinks that hold a column as types no value fits both of.
pub fn agree(sinks: &[SinkView], mut plans: Vec<SinkPlan>, input: &[InputColumn]) -> Result<WritePlan, String> {
    let position = |name: &str| input.iter().position(|c| c.name == name);
    // Columns every row is typed into: each sink's, first seen first.
    let mut names: Vec<String> = Vec::new();
    for p in &plans {
        for c in &p.schema.columns {
            if !names.contains(&c.name) {
                names.push(c.name.clone());
            }
        }
    }
    let is_new = |p: &SinkPlan, col: &str| {
        p.changes.iter().any(|ch| match ch {
            Change::Created => true,
            Change::Added { column, .. } => column == col,
            _ => false,
        })
    };
    let mut columns = Vec::with_capacity(names.len());
    for name in &names {
        // The types of the sinks that hold the column already decide; a column only new
        // sinks take is typed as the input has it.
        let mut kind: Option<(ColumnType, &str)> = None;
        for (s, p) in sinks.iter().zip(&plans) {
            let Some(c) = p.schema.column(name) else { continue };
            if is_new(p, name) {
                continue;
            }
            kind = Some(match kind {
                None => (c.kind, s.name),
                Some((k, by)) if k.coerces_to(c.kind) => (k, by),
                Some((k, _)) if c.kind.coerces_to(k) => (c.kind, s.name),
                Some((k, by)) => {
                    return Err(format!(
                        "{by} holds column {name:?} as {k} and {} as {}: no value fits both; align the sinks' types",
                        s.name, c.kind
                    ))
                }
            });
        }
        let input_col = position(name);
        let kind = match (kind, input_col) {
            (Some((k, _)), _) => k,
            (None, Some(i)) => input[i].kind,
            (None, None) => ColumnType::String,
        };
        columns.push(WriteColumn {
            name: name.clone(),
            kind,
            nullable: input_col.is_none_or(|i| input[i].nullable),
            input: input_col,
            misfit: Misfit::Discard,
            misfit_by: String::new(),
            also: vec![],
        });
    }
    // Each sink's final types: new columns take the agreed type; a widening goes no
    // further than the agreed type needs.
    for p in &mut plans {
        let mut keep = Vec::with_capacity(p.changes.len());
        for ch in std::mem::take(&mut p.changes) {
            match ch {
                Change::Widened { column, from, .. } => {
                    let agreed = columns.iter().find(|w| w.name == column).map_or(from, |w| w.kind);
                    let to = from.join(agreed);
                    if let Some(c) = p.schema.columns.iter_mut().find(|c| c.name == column) {
                        c.kind = to;
                    }
                    if to != from {
                        keep.push(Change::Widened { column, from, to });
                    }
                }
                Change::Added { column, .. } => {
                    let agreed = columns.iter().find(|w| w.name == column).map(|w| w.kind);
                    let kind = agreed.unwrap_or(ColumnType::String);
                    if let Some(c) = p.schema.columns.iter_mut().find(|c| c.name == column) {
                        c.kind = kind;
                    }
                    keep.push(Change::Added { column, kind });
                }
                Change::Created => {
                    for c in &mut p.schema.columns {
                        if let Some(w) = columns.iter().find(|w| w.name == c.name) {
                            c.kind = w.kind;
                        }
                    }
                    if let Some(part) = &mut p.schema.partition {
                        let kind = p.schema.columns.iter().find(|c| c.name == part.column).map(|c| c.kind);
                        if let Some(k) = kind {
                            *part = Partition::new(&part.column, k);
                        }
                    }
                    keep.push(Change::Created);
                }
                other => keep.push(other),
            }
        }
        p.changes = keep;
    }
    // What a misfit does (the strictest contract of the sinks holding the column), the
    // wider types values must also fit, and nullability.
    for w in &mut columns {
        for (s, p) in sinks.iter().zip(&plans) {
            let Some(c) = p.schema.column(&w.name) else { continue };
            let m = Misfit::from(s.contract.data_type);
            if w.misfit_by.is_empty() || m > w.misfit {
                w.misfit = m;
                w.misfit_by = format!("{} (schema_contract.data_type: {})", s.name, s.contract.data_type.as_str());
            }
            if c.kind != w.kind && !w.also.contains(&c.kind) {
                w.also.push(c.kind);
            }
            w.nullable &= c.nullable;
        }
    }
    let mut quarantine_if_present = Vec::new();
    let mut discarded = Vec::new();
    for (i, c) in input.iter().enumerate() {
        for (s, p) in sinks.iter().zip(&plans) {
            if !p.discarded.contains(&c.name) {
                continue;
            }
            if s.contract.columns == ColumnPolicy::Quarantine {
                if !quarantine_if_present.iter().any(|(j, _)| *j == i) {
                    quarantine_if_present.push((
                        i,
                        format!(
                            "column {:?} is not in {}'s schema (schema_contract.columns: quarantine)",
                            c.name, s.name
                        ),
                    ));
                }
            } else if !names.contains(&c.name) && !discarded.iter().any(|(n, _)| n == &c.name) {
                discarded.push((
                    c.name.clone(),
                    format!("not in {}'s schema (schema_contract.columns: discard_value)", s.name),
                ));
            }
        }
    }
    Ok(WritePlan { columns, quarantine_if_present, discarded, sinks: plans })
}

/// What a sink's schema becomes when a write planned against an older version commits
/// after others changed it: the write's own changes re-applied on top of `now`. `wrote`
/// is the schema of the files the write holds.
#[derive(Debug, Clone, PartialEq)]
pub struct Merged {
    pub schema: Schema,
    /// The changes this write makes to `now` (empty: none, no new version).
    pub changes: Vec<Change>,
    /// Columns the write holds as a narrower type than the sink now does: its files are
    /// cast to these (a lossless coercion) before they land.
    pub conform: Vec<(String, ColumnType)>,
}

/// Re-applies a planned write on top of the sink's schema `now`. Fails (a retry plans
/// afresh) when a concurrent change gave a column a type the write's values may not fit.
pub fn merge(now: Option<&Schema>, plan: &SinkPlan, wrote: &Schema, sink: &str) -> Result<Merged, String> {
    let Some(now) = now else {
        return Ok(Merged { schema: plan.schema.clone(), changes: plan.changes.clone(), conform: vec![] });
    };
    if now.partition != plan.schema.partition && plan.changes.contains(&Change::Created) {
        return Err(format!(
            "{sink} was created meanwhile with another partitioning ({:?}); the retry follows it",
            now.partition.as_ref().map(|p| &p.column)
        ));
    }
    let mut schema = now.clone();
    let mut changes = Vec::new();
    for c in &plan.schema.columns {
        match schema.columns.iter_mut().find(|n| n.name == c.name) {
            None => {
                schema.columns.push(Column { name: c.name.clone(), kind: c.kind, nullable: true });
                changes.push(Change::Added { column: c.name.clone(), kind: c.kind });
            }
            Some(n) if n.kind == c.kind => {}
            // The plan widened it and no one went further meanwhile.
            Some(n)
                if n.kind.coerces_to(c.kind)
                    && plan
                        .changes
                        .iter()
                        .any(|ch| matches!(ch, Change::Widened { column, .. } if column == &c.name)) =>
            {
                changes.push(Change::Widened { column: c.name.clone(), from: n.kind, to: c.kind });
                n.kind = c.kind;
            }
            Some(_) => {}
        }
    }
    let mut conform = Vec::new();
    for c in &wrote.columns {
        let Some(n) = schema.column(&c.name) else { continue };
        if n.kind == c.kind {
            continue;
        }
        if c.kind.coerces_to(n.kind) {
            conform.push((c.name.clone(), n.kind));
        } else {
            return Err(format!(
                "{sink}: column {:?} became {} meanwhile and this write holds it as {}; the retry follows the new schema",
                c.name, n.kind, c.kind
            ));
        }
    }
    Ok(Merged { schema, changes, conform })
}

#[cfg(test)]
mod tests {
    use super::ColumnType::*;
    use super::*;

    fn cols(spec: &[(&str, ColumnType)]) -> Vec<InputColumn> {
        spec.iter().map(|(n, k)| InputColumn { name: n.to_string(), kind: *k, nullable: true }).collect()
    }

    fn schema(spec: &[(&str, ColumnType)]) -> Schema {
        Schema {
            columns: spec.iter().map(|(n, k)| Column { name: n.to_string(), kind: *k, nullable: true }).collect(),
            partition: None,
        }
    }

    fn view<'a>(
        name: &'a str,
        current: Option<&'a Schema>,
        columns: ColumnPolicy,
        data_type: TypePolicy,
    ) -> SinkView<'a> {
        SinkView { name, current, contract: SchemaContract { columns, data_type }, partition_by: None }
    }

    const DAY1: [(&str, ColumnType); 3] = [("id", Int64), ("name", String), ("amount", Float64)];

    #[test]
    fn a_new_sink_takes_the_input_as_its_first_version() {
        let input = cols(&DAY1);
        let p = WritePlan::for_sinks(&[view("parquet /lake", None, ColumnPolicy::Freeze, TypePolicy::Freeze)], &input)
            .expect("plan");
        assert_eq!(p.sinks[0].changes, vec![Change::Created]);
        assert_eq!(p.sinks[0].schema, schema(&DAY1));
        assert_eq!(
            p.columns.iter().map(|c| (c.name.as_str(), c.kind, c.input)).collect::<Vec<_>>(),
            vec![("id", Int64, Some(0)), ("name", String, Some(1)), ("amount", Float64, Some(2))]
        );
    }

    #[test]
    fn day_two_evolves_a_new_column_and_keeps_the_datasets_types() {
        let day1 = schema(&DAY1);
        // Day 2: `currency` is new; `amount` held "NA" and numbers, inferred float64.
        let input = cols(&[("id", Int64), ("name", String), ("amount", Float64), ("currency", String)]);
        let sinks = [
            view("parquet /lake", Some(&day1), ColumnPolicy::Evolve, TypePolicy::Quarantine),
            view("postgres t", Some(&day1), ColumnPolicy::Evolve, TypePolicy::Quarantine),
        ];
        let p = WritePlan::for_sinks(&sinks, &input).expect("plan");
        for s in &p.sinks {
            assert_eq!(s.changes, vec![Change::Added { column: "currency".into(), kind: String }]);
            assert_eq!(s.schema.describe(), "id: int64, name: string, amount: float64, currency: string");
        }
        // Day 3: `amount` infers as string ("x5"): the dataset's float64 stands, the bad
        // value quarantines its row.
        let day2 = p.sinks[0].schema.clone();
        let input = cols(&[("id", Int64), ("name", String), ("amount", String), ("currency", String)]);
        let p = WritePlan::for_sinks(
            &[view("parquet /lake", Some(&day2), ColumnPolicy::Evolve, TypePolicy::Quarantine)],
            &input,
        )
        .expect("plan");
        let amount = &p.columns[2];
        assert_eq!((amount.kind, amount.misfit), (Float64, Misfit::Quarantine));
        assert!(p.sinks[0].changes.is_empty(), "no new version");
    }

    #[test]
    fn other_contracts_discard_quarantine_or_refuse() {
        let day1 = schema(&DAY1);
        let input = cols(&[("id", Int64), ("name", String), ("amount", Float64), ("currency", String)]);
        let p = WritePlan::for_sinks(
            &[view("p", Some(&day1), ColumnPolicy::DiscardValue, TypePolicy::DiscardValue)],
            &input,
        )
        .expect("plan");
        assert_eq!(
            p.discarded,
            vec![("currency".to_string(), "not in p's schema (schema_contract.columns: discard_value)".to_string())]
        );
        assert_eq!(p.columns.len(), 3);
        assert_eq!(p.columns[2].misfit, Misfit::Discard);
        let p = WritePlan::for_sinks(&[view("p", Some(&day1), ColumnPolicy::Quarantine, TypePolicy::Freeze)], &input)
            .expect("plan");
        assert_eq!(p.quarantine_if_present.len(), 1);
        assert_eq!(p.quarantine_if_present[0].0, 3);
        assert_eq!(p.columns[0].misfit, Misfit::Refuse);
        // A rename under freeze names both names.
        let renamed = cols(&[("id", Int64), ("name", String), ("amt", Float64)]);
        let e = WritePlan::for_sinks(
            &[view("parquet /lake", Some(&day1), ColumnPolicy::Freeze, TypePolicy::Quarantine)],
            &renamed,
        )
        .expect_err("frozen");
        assert!(e.contains("\"amt\"") && e.contains("\"amount\"") && e.contains("renamed"), "{e}");
        // A missing column is fine (null), unless the sink requires it.
        let mut strict = day1.clone();
        strict.columns[0].nullable = false;
        let e = WritePlan::for_sinks(
            &[view("t", Some(&strict), ColumnPolicy::Evolve, TypePolicy::Quarantine)],
            &cols(&[("name", String)]),
        )
        .expect_err("required");
        assert!(e.contains("requires column \"id\""), "{e}");
    }

    #[test]
    fn widening_is_explicit_and_goes_only_as_far_as_every_sink_agrees() {
        let ints = schema(&[("id", Int64), ("amount", Int64)]);
        let input = cols(&[("id", Int64), ("amount", Float64)]);
        let p = WritePlan::for_sinks(&[view("p", Some(&ints), ColumnPolicy::Evolve, TypePolicy::Widen)], &input)
            .expect("plan");
        assert_eq!(p.sinks[0].changes, vec![Change::Widened { column: "amount".into(), from: Int64, to: Float64 }]);
        assert_eq!(p.columns[1].kind, Float64);
        // Beside a sink that does not widen, the narrower type holds and no one widens.
        let p = WritePlan::for_sinks(
            &[
                view("p", Some(&ints), ColumnPolicy::Evolve, TypePolicy::Widen),
                view("t", Some(&ints), ColumnPolicy::Evolve, TypePolicy::Quarantine),
            ],
            &input,
        )
        .expect("plan");
        assert_eq!(p.columns[1].kind, Int64);
        assert!(p.sinks.iter().all(|s| s.changes.is_empty()), "{:?}", p.sinks);
        // A new sink beside an existing one takes the existing types.
        let text_amount = cols(&[("id", Int64), ("amount", String)]);
        let p = WritePlan::for_sinks(
            &[
                view("p", Some(&ints), ColumnPolicy::Evolve, TypePolicy::Quarantine),
                view("new", None, ColumnPolicy::Evolve, TypePolicy::Quarantine),
            ],
            &text_amount,
        )
        .expect("plan");
        assert_eq!(p.sinks[1].schema, ints);
        // Sinks holding a column as types no value fits both of are refused.
        let dates = schema(&[("id", Int64), ("amount", Date)]);
        let e = WritePlan::for_sinks(
            &[
                view("p", Some(&ints), ColumnPolicy::Evolve, TypePolicy::Quarantine),
                view("t", Some(&dates), ColumnPolicy::Evolve, TypePolicy::Quarantine),
            ],
            &input,
        )
        .expect_err("disagree");
        assert!(e.contains("\"amount\"") && e.contains("int64") && e.contains("date"), "{e}");
        // A float64 sink beside an int64 one: values are typed int64 and must fit both.
        let floats = schema(&[("id", Int64), ("amount", Float64)]);
        let p = WritePlan::for_sinks(
            &[
                view("p", Some(&floats), ColumnPolicy::Evolve, TypePolicy::Quarantine),
                view("t", Some(&ints), ColumnPolicy::Evolve, TypePolicy::Freeze),
            ],
            &input,
        )
        .expect("plan");
        assert_eq!(
            (p.columns[1].kind, p.columns[1].also.clone(), p.columns[1].misfit),
            (Int64, vec![Float64], Misfit::Refuse)
        );
    }

    #[test]
    fn partitioning_is_kept_and_never_widened() {
        let mut ds = schema(&[("id", Int64), ("ts", Timestamp)]);
        ds.partition = Some(Partition::new("ts", Timestamp));
        let input = cols(&[("id", Int64), ("ts", Timestamp)]);
        let mut v = view("parquet /lake", Some(&ds), ColumnPolicy::Evolve, TypePolicy::Widen);
        assert!(plan_sink(&v, &input).is_err(), "no partition_by on a partitioned dataset");
        v.partition_by = Some("id");
        assert!(plan_sink(&v, &input).expect_err("other column").contains("partitioned by \"ts\" (folders ts_date=…)"));
        v.partition_by = Some("ts");
        assert!(plan_sink(&v, &input).is_ok());
        let e = plan_sink(&v, &cols(&[("id", Int64), ("ts", String)])).expect_err("widen partition");
        assert!(e.contains("never widened"), "{e}");
        let new =
            SinkView { partition_by: Some("nope"), ..view("p", None, ColumnPolicy::Evolve, TypePolicy::Quarantine) };
        assert!(plan_sink(&new, &input).expect_err("missing").contains("\"nope\""));
    }

    #[test]
    fn a_late_commit_merges_onto_what_others_changed() {
        let day1 = schema(&DAY1);
        let input = cols(&[("id", Int64), ("name", String), ("amount", Float64), ("currency", String)]);
        let plan =
            plan_sink(&view("p", Some(&day1), ColumnPolicy::Evolve, TypePolicy::Quarantine), &input).expect("plan");
        // Meanwhile another write added `region`: both columns end up in the schema.
        let mut now = day1.clone();
        now.columns.push(Column { name: "region".into(), kind: String, nullable: true });
        let m = merge(Some(&now), &plan, &plan.schema, "p").expect("merges");
        assert_eq!(m.schema.describe(), "id: int64, name: string, amount: float64, region: string, currency: string");
        assert_eq!(m.changes, vec![Change::Added { column: "currency".into(), kind: String }]);
        // Meanwhile `currency` was added as int64: this write's strings may not fit.
        let mut now = day1.clone();
        now.columns.push(Column { name: "currency".into(), kind: Int64, nullable: true });
        assert!(merge(Some(&now), &plan, &plan.schema, "p").expect_err("conflict").contains("currency"));
        // Meanwhile `amount` was widened to string: this write's floats are cast to it.
        let mut now = day1.clone();
        now.columns[2].kind = String;
        let m = merge(Some(&now), &plan, &plan.schema, "p").expect("conforms");
        assert_eq!(m.conform, vec![("amount".to_string(), String)]);
    }

    #[test]
    fn contracts_read_with_dlt_spellings_and_refuse_unknown_ones() {
        let c: SchemaContract =
            serde_json::from_str(r#"{"columns": "discard_row", "data_type": "widen"}"#).expect("reads");
        assert_eq!((c.columns, c.data_type), (ColumnPolicy::Quarantine, TypePolicy::Widen));
        assert_eq!(serde_json::from_str::<SchemaContract>("{}").expect("defaults"), SchemaContract::default());
        assert!(serde_json::from_str::<SchemaContract>(r#"{"columns": "melt"}"#).is_err());
        assert!(serde_json::from_str::<SchemaContract>(r#"{"tables": "freeze"}"#).is_err());
    }
}
