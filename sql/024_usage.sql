-- What each conversation costs: a ledger row per model call, totals kept as the
-- rows arrive, quotas checked (and reserved) when a turn starts.
--
-- usage_ledger: one row per model call (a chat turn's, a naming call's), with
-- the price it was charged at; never rewritten. No foreign key to the session:
-- billing outlives chats, and the ledger holds no message content.
-- usage_daily_totals / usage_session_totals / usage_user_days: kept by a trigger on
-- the ledger, so totals and quota checks read a few rows, not the ledger.
-- usage_quotas: per user or business, per day or month, in tokens or cost.
-- usage_reservations: what a running turn may still spend (its max_tokens),
-- counted against quotas until the turn's end records the real usage.
-- usage_daily: a view for the Supabase dashboard (the caller's rows under RLS).

create table if not exists public.usage_ledger (
    id                   bigint      generated always as identity primary key,
    created_at           timestamptz not null default now(),
    user_id              text        not null,
    business_id          text        not null,
    session_id           text        not null,
    -- chat_sessions.id of the session when the call was made (a session id may be used again after a delete).
    session_row_id       bigint,
    run_id               uuid,
    kind                 text        not null,
    model                text        not null,
    input_tokens         integer     not null,
    cached_input_tokens  integer     not null default 0,
    output_tokens        integer     not null,
    reasoning_tokens     integer,
    -- Micro-units of `currency` (1 = 0.000001), at the prices below.
    cost_micros          bigint      not null,
    currency             text        not null,
    -- The prices charged, per million tokens, and the prices file's version.
    price_input          numeric,
    price_cached_input   numeric,
    price_output         numeric,
    price_version        text,
    -- 'reported' by the upstream, or 'estimated' from the text.
    source               text        not null,
    constraint usage_ledger_kind_check check (kind in ('chat', 'naming')),
    constraint usage_ledger_source_check check (source in ('reported', 'estimated')),
    constraint usage_ledger_tokens_check check (input_tokens >= 0 and output_tokens >= 0
        and cached_input_tokens >= 0 and coalesce(reasoning_tokens, 0) >= 0 and cost_micros >= 0)
);

-- Retention (USAGE_RETENTION_DAYS) removes the oldest rows.
create index if not exists usage_ledger_created_idx on public.usage_ledger (created_at);
create index if not exists usage_ledger_user_idx on public.usage_ledger (user_id, created_at);

create table if not exists public.usage_daily_totals (
    user_id             text    not null,
    day                 date    not null,
    session_id          text    not null,
    model               text    not null,
    business_id         text    not null,
    calls               integer not null default 0,
    input_tokens        bigint  not null default 0,
    cached_input_tokens bigint  not null default 0,
    output_tokens       bigint  not null default 0,
    reasoning_tokens    bigint  not null default 0,
    cost_micros         bigint  not null default 0,
    primary key (user_id, day, session_id, model)
);

-- A user's day in one row: what a quota check reads (a day: one row; a month: up to 31).
create table if not exists public.usage_user_days (
    user_id             text    not null,
    day                 date    not null,
    business_id         text    not null,
    calls               integer not null default 0,
    input_tokens        bigint  not null default 0,
    cached_input_tokens bigint  not null default 0,
    output_tokens       bigint  not null default 0,
    reasoning_tokens    bigint  not null default 0,
    cost_micros         bigint  not null default 0,
    primary key (user_id, day)
);

-- A business's quota reads its users' days.
create index if not exists usage_user_days_business_idx on public.usage_user_days (business_id, day);

create table if not exists public.usage_session_totals (
    session_row_id      bigint  primary key,
    user_id             text    not null,
    session_id          text    not null,
    calls               integer not null default 0,
    input_tokens        bigint  not null default 0,
    cached_input_tokens bigint  not null default 0,
    output_tokens       bigint  not null default 0,
    reasoning_tokens    bigint  not null default 0,
    cost_micros         bigint  not null default 0
);

create table if not exists public.usage_quotas (
    scope           text        not null,
    scope_id        text        not null,
    period          text        not null,
    max_tokens      bigint,
    max_cost_micros bigint,
    updated_at      timestamptz not null default now(),
    primary key (scope, scope_id, period),
    constraint usage_quotas_scope_check check (scope in ('user', 'business')),
    constraint usage_quotas_period_check check (period in ('day', 'month')),
    constraint usage_quotas_limits_check check (coalesce(max_tokens, 0) >= 0 and coalesce(max_cost_micros, 0) >= 0)
);

create table if not exists public.usage_reservations (
    run_id      uuid        primary key,
    user_id     text        not null,
    business_id text        not null,
    tokens      bigint      not null,
    cost_micros bigint      not null,
    -- A turn whose process died stops counting once this passes.
    expires_at  timestamptz not null
);

create index if not exists usage_reservations_user_idx on public.usage_reservations (user_id);
create index if not exists usage_reservations_business_idx on public.usage_reservations (business_id);

-- usage.updated: a session's usage after each model call of it.
alter table public.session_events drop constraint if exists session_events_type_check;
alter table public.session_events add constraint session_events_type_check check (type in
    ('session.created', 'session.updated', 'session.deleted', 'run.started', 'run.finished', 'run.queued',
     'usage.updated'));

-- Totals follow the ledger, in the writing statement.
create or replace function public.usage_ledger_add_totals()
returns trigger
language plpgsql
set search_path = ''
as $$
begin
    insert into public.usage_daily_totals as t (user_id, day, session_id, model, business_id, calls, input_tokens,
                                                cached_input_tokens, output_tokens, reasoning_tokens, cost_micros)
    values (new.user_id, (new.created_at at time zone 'UTC')::date, new.session_id, new.model, new.business_id, 1,
            new.input_tokens, new.cached_input_tokens, new.output_tokens, coalesce(new.reasoning_tokens, 0),
            new.cost_micros)
    on conflict (user_id, day, session_id, model) do update
       set calls = t.calls + 1, input_tokens = t.input_tokens + excluded.input_tokens,
           cached_input_tokens = t.cached_input_tokens + excluded.cached_input_tokens,
           output_tokens = t.output_tokens + excluded.output_tokens,
           reasoning_tokens = t.reasoning_tokens + excluded.reasoning_tokens,
           cost_micros = t.cost_micros + excluded.cost_micros;
    insert into public.usage_user_days as t (user_id, day, business_id, calls, input_tokens, cached_input_tokens,
                                             output_tokens, reasoning_tokens, cost_micros)
    values (new.user_id, (new.created_at at time zone 'UTC')::date, new.business_id, 1, new.input_tokens,
            new.cached_input_tokens, new.output_tokens, coalesce(new.reasoning_tokens, 0), new.cost_micros)
    on conflict (user_id, day) do update
       set calls = t.calls + 1, input_tokens = t.input_tokens + excluded.input_tokens,
           cached_input_tokens = t.cached_input_tokens + excluded.cached_input_tokens,
           output_tokens = t.output_tokens + excluded.output_tokens,
           reasoning_tokens = t.reasoning_tokens + excluded.reasoning_tokens,
           cost_micros = t.cost_micros + excluded.cost_micros;
    if new.session_row_id is not null then
        insert into public.usage_session_totals as t (session_row_id, user_id, session_id, calls, input_tokens,
                                                      cached_input_tokens, output_tokens, reasoning_tokens, cost_micros)
        values (new.session_row_id, new.user_id, new.session_id, 1, new.input_tokens, new.cached_input_tokens,
                new.output_tokens, coalesce(new.reasoning_tokens, 0), new.cost_micros)
        on conflict (session_row_id) do update
           set calls = t.calls + 1, input_tokens = t.input_tokens + excluded.input_tokens,
               cached_input_tokens = t.cached_input_tokens + excluded.cached_input_tokens,
               output_tokens = t.output_tokens + excluded.output_tokens,
               reasoning_tokens = t.reasoning_tokens + excluded.reasoning_tokens,
               cost_micros = t.cost_micros + excluded.cost_micros;
    end if;
    return null;
end;
$$;

drop trigger if exists usage_ledger_add_totals on public.usage_ledger;
create trigger usage_ledger_add_totals
    after insert on public.usage_ledger
    for each row execute function public.usage_ledger_add_totals();

-- usage.updated, with the session's totals as committed, at commit: after a turn's
-- session.updated and run.finished (their triggers are queued first).
create or replace function public.usage_ledger_emit_event()
returns trigger
language plpgsql
set search_path = ''
as $$
declare
    totals public.usage_session_totals;
begin
    select * into totals from public.usage_session_totals t where t.session_row_id = new.session_row_id;
    if found then
        perform public.emit_session_event(new.user_id, new.session_id, 'usage.updated', jsonb_build_object(
            'run_id', new.run_id, 'kind', new.kind,
            'usage', jsonb_build_object('calls', totals.calls, 'input_tokens', totals.input_tokens,
                                        'output_tokens', totals.output_tokens, 'cost_micros', totals.cost_micros,
                                        'currency', new.currency)));
    end if;
    return null;
end;
$$;

drop trigger if exists usage_ledger_emit_event on public.usage_ledger;
create constraint trigger usage_ledger_emit_event
    after insert on public.usage_ledger
    deferrable initially deferred
    for each row when (new.session_row_id is not null)
    execute function public.usage_ledger_emit_event();

-- What a scope has used in the period that holds p_now (UTC days and months), and what live turns
-- reserved: index range reads (usage_user_days' primary key or its business index; the reservations').
create or replace function public.usage_used(p_scope text, p_scope_id text, p_period text, p_now timestamptz)
returns table (tokens bigint, cost_micros bigint)
language plpgsql
stable
set search_path = ''
as $$
declare
    first_day date := (date_trunc(p_period, p_now at time zone 'UTC'))::date;
    used_tokens bigint;
    used_cost bigint;
    held_tokens bigint;
    held_cost bigint;
begin
    if p_scope = 'user' then
        select coalesce(sum(t.input_tokens + t.output_tokens), 0), coalesce(sum(t.cost_micros), 0)
          into used_tokens, used_cost
          from public.usage_user_days t where t.user_id = p_scope_id and t.day >= first_day;
        select coalesce(sum(r.tokens), 0), coalesce(sum(r.cost_micros), 0) into held_tokens, held_cost
          from public.usage_reservations r where r.user_id = p_scope_id and r.expires_at > now();
    else
        select coalesce(sum(t.input_tokens + t.output_tokens), 0), coalesce(sum(t.cost_micros), 0)
          into used_tokens, used_cost
          from public.usage_user_days t where t.business_id = p_scope_id and t.day >= first_day;
        select coalesce(sum(r.tokens), 0), coalesce(sum(r.cost_micros), 0) into held_tokens, held_cost
          from public.usage_reservations r where r.business_id = p_scope_id and r.expires_at > now();
    end if;
    tokens := used_tokens + held_tokens;
    cost_micros := used_cost + held_cost;
    return next;
end;
$$;

-- The quotas that hold for a user of a business: the user's own rows, the defaults (p_defaults:
-- {"day": {"tokens", "cost_micros"}, "month": {...}}) for periods the user has no row for, and
-- the business's rows. For each: what is left (reservations of live turns counted) and when it resets.
create or replace function public.usage_quota_state(
    p_user_id text, p_business_id text, p_now timestamptz, p_defaults jsonb
)
returns table (scope text, period text, max_tokens bigint, max_cost_micros bigint,
               tokens_left bigint, cost_left_micros bigint, resets_at timestamptz)
language plpgsql
stable
set search_path = ''
as $$
declare
    q record;
    used record;
begin
    for q in
        select x.scope, x.period, x.max_tokens, x.max_cost_micros from public.usage_quotas x
         where (x.scope = 'user' and x.scope_id = p_user_id) or (x.scope = 'business' and x.scope_id = p_business_id)
        union all
        select 'user', d.key, nullif(d.value->>'tokens', '')::bigint, nullif(d.value->>'cost_micros', '')::bigint
          from jsonb_each(coalesce(p_defaults, '{}'::jsonb)) d
         where not exists (select 1 from public.usage_quotas x
                            where x.scope = 'user' and x.scope_id = p_user_id and x.period = d.key)
    loop
        if q.max_tokens is null and q.max_cost_micros is null then
            continue;
        end if;
        select * into used from public.usage_used(q.scope, case when q.scope = 'user' then p_user_id else p_business_id end,
                                                  q.period, p_now);
        scope := q.scope;
        period := q.period;
        max_tokens := q.max_tokens;
        max_cost_micros := q.max_cost_micros;
        tokens_left := q.max_tokens - used.tokens;
        cost_left_micros := q.max_cost_micros - used.cost_micros;
        resets_at := (date_trunc(q.period, p_now at time zone 'UTC')
                      + case when q.period = 'day' then interval '1 day' else interval '1 month' end) at time zone 'UTC';
        return next;
    end loop;
end;
$$;

-- A chat turn's start (sql/023's start_chat_run) with its quotas, in one round trip. Without a
-- quota for the user or business it is start_chat_run plus two indexed reads (the session's
-- business and size; whether a quota row applies). With one, under the
-- business's and then the user's lock (so concurrent turns see each other's reservations): refuse
-- if the turn cannot afford its estimated input and one output token (blocked, with when the
-- exhausted period resets), else start the run and reserve its input estimate plus the output
-- tokens it is granted (the least of p_want_tokens and what every quota leaves).
create or replace function public.start_chat_turn(
    p_user_id          text,
    p_session_id       text,
    p_run_id           uuid,
    p_owner            text,
    p_lease_seconds    double precision,
    p_max_messages     integer,
    p_max_bytes        bigint,
    p_max_runs         integer,
    p_query            text,
    p_now              timestamptz,
    p_defaults         jsonb,
    p_want_tokens      integer,
    p_context_tokens   integer,
    p_price_input      double precision,
    p_price_output     double precision,
    p_reserve_seconds  double precision
)
returns table (session_row public.chat_sessions, new_run_id uuid, granted_tokens integer, blocked boolean,
               retry_after_seconds integer, tokens_left bigint, cost_left_micros bigint)
language plpgsql
set search_path = ''
as $$
declare
    quotas_apply boolean;
    input_estimate bigint;
    history bigint;
    tokens_room bigint;
    cost_room bigint;
    grant_tokens bigint;
    reset_at timestamptz;
    started record;
    p_business_id text;
begin
    select s.business_id, s.history_bytes into p_business_id, history from public.chat_sessions s
     where s.user_id = p_user_id and s.session_id = p_session_id;
    if not found then
        return;  -- created on first use, then tried again
    end if;
    quotas_apply := (p_defaults is not null and p_defaults <> '{}'::jsonb)
        or exists (select 1 from public.usage_quotas x
                    where (x.scope = 'user' and x.scope_id = p_user_id)
                       or (x.scope = 'business' and x.scope_id = p_business_id));
    if not quotas_apply then
        for started in select * from public.start_chat_run(p_user_id, p_session_id, p_run_id, p_owner,
                p_lease_seconds, p_max_messages, p_max_bytes, p_max_runs, p_query) loop
            session_row := started.session_row;
            new_run_id := started.new_run_id;
            blocked := false;
            return next;
        end loop;
        return;
    end if;
    perform pg_advisory_xact_lock(hashtextextended('usage_business:' || p_business_id, 0));
    perform pg_advisory_xact_lock(hashtextextended('chat_session_runs:' || p_user_id, 0));
    input_estimate := least(coalesce(p_context_tokens, 2147483647), (history + octet_length(coalesce(p_query, ''))) / 4 + 1);
    select min(q.tokens_left), min(q.cost_left_micros) into tokens_room, cost_room
      from public.usage_quota_state(p_user_id, p_business_id, p_now, p_defaults) q;
    grant_tokens := p_want_tokens;
    if tokens_room is not null then
        grant_tokens := least(grant_tokens, tokens_room - input_estimate);
    end if;
    if cost_room is not null and p_price_output > 0 then
        grant_tokens := least(grant_tokens, floor((cost_room - input_estimate * p_price_input) / p_price_output)::bigint);
    elsif cost_room is not null and cost_room <= 0 then
        grant_tokens := 0;
    end if;
    tokens_left := tokens_room;
    cost_left_micros := cost_room;
    if grant_tokens < 1 then
        -- Blocked until the latest reset among the exhausted quotas.
        select max(q.resets_at) into reset_at
          from public.usage_quota_state(p_user_id, p_business_id, p_now, p_defaults) q
         where q.tokens_left - input_estimate < 1 or q.cost_left_micros - input_estimate * p_price_input < p_price_output
            or q.cost_left_micros <= 0;
        blocked := true;
        retry_after_seconds := greatest(1, ceil(extract(epoch from (coalesce(reset_at, p_now) - p_now)))::integer);
        return next;
        return;
    end if;
    for started in select * from public.start_chat_run(p_user_id, p_session_id, p_run_id, p_owner,
            p_lease_seconds, p_max_messages, p_max_bytes, p_max_runs, p_query) loop
        session_row := started.session_row;
        new_run_id := started.new_run_id;
        blocked := false;
        if started.new_run_id is not null then
            granted_tokens := grant_tokens;
            insert into public.usage_reservations (run_id, user_id, business_id, tokens, cost_micros, expires_at)
            values (started.new_run_id, p_user_id, p_business_id, input_estimate + grant_tokens,
                    ceil(input_estimate * p_price_input + grant_tokens * p_price_output)::bigint,
                    now() + make_interval(secs => p_reserve_seconds))
            on conflict (run_id) do nothing;
        end if;
        return next;
    end loop;
end;
$$;

-- The dashboard's view: per user, business, day and model. security_invoker: a caller sees what
-- RLS on usage_daily_totals lets them see (their own rows through the Data API; everything as
-- the dashboard's postgres role).
create or replace view public.usage_daily with (security_invoker = true) as
select user_id, business_id, day, model, sum(calls)::bigint as calls, sum(input_tokens)::bigint as input_tokens,
       sum(cached_input_tokens)::bigint as cached_input_tokens, sum(output_tokens)::bigint as output_tokens,
       sum(reasoning_tokens)::bigint as reasoning_tokens, sum(cost_micros)::bigint as cost_micros
  from public.usage_daily_totals
 group by user_id, business_id, day, model;

alter table public.usage_ledger enable row level security;
alter table public.usage_daily_totals enable row level security;
alter table public.usage_session_totals enable row level security;
alter table public.usage_user_days enable row level security;
alter table public.usage_quotas enable row level security;
alter table public.usage_reservations enable row level security;

revoke execute on function public.usage_ledger_add_totals() from public;
revoke execute on function public.usage_ledger_emit_event() from public;
revoke execute on function public.usage_used(text, text, text, timestamptz) from public;
revoke execute on function public.usage_quota_state(text, text, timestamptz, jsonb) from public;
revoke execute on function public.start_chat_turn(text, text, uuid, text, double precision, integer, bigint, integer,
    text, timestamptz, jsonb, integer, integer, double precision, double precision, double precision) from public;

do $$
declare
    role_name text;
begin
    foreach role_name in array array['anon', 'authenticated'] loop
        if exists (select 1 from pg_roles where rolname = role_name) then
            execute format('revoke all on public.usage_ledger, public.usage_daily_totals, public.usage_session_totals, '
                           'public.usage_user_days, '
                           'public.usage_quotas, public.usage_reservations, public.usage_daily from %I', role_name);
            execute format('revoke execute on function public.usage_ledger_add_totals(), '
                           'public.usage_ledger_emit_event(), '
                           'public.usage_used(text, text, text, timestamptz), '
                           'public.usage_quota_state(text, text, timestamptz, jsonb), '
                           'public.start_chat_turn(text, text, uuid, text, double precision, integer, bigint, integer, '
                           'text, timestamptz, jsonb, integer, integer, double precision, double precision, '
                           'double precision) from %I', role_name);
        end if;
    end loop;
    -- A signed-in user may read their own usage (the ledger, the daily totals, and so the view); the anon key nothing.
    if to_regprocedure('auth.uid()') is not null
       and exists (select 1 from pg_roles where rolname = 'authenticated') then
        execute 'grant select on public.usage_ledger, public.usage_daily_totals, public.usage_daily to authenticated';
        execute 'drop policy if exists usage_ledger_select_own on public.usage_ledger';
        execute 'create policy usage_ledger_select_own on public.usage_ledger
                 for select to authenticated
                 using (user_id = (select auth.uid())::text)';
        execute 'drop policy if exists usage_daily_totals_select_own on public.usage_daily_totals';
        execute 'create policy usage_daily_totals_select_own on public.usage_daily_totals
                 for select to authenticated
                 using (user_id = (select auth.uid())::text)';
    end if;
end;
$$;
