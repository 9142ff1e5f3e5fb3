-- A business's quota check in one indexed read (issue 30: "the quota check is one indexed read").
--
-- sql/026 summed usage_user_days over every user of the business for the period: a cost that grew
-- with its active users (+2.6-2.8 ms a turn with 2,000 of them a week into the month, four times that
-- at its end). usage_business_days holds a business's day in one row, so start_chat_turn (and
-- usage_quota_state, through usage_used) reads one row for a day and at most 31 for a month, by
-- primary key. The ledger's trigger keeps it only for a business that has a quota (an indexed read
-- of usage_quotas' primary key, scope and scope_id): a business without one never makes its users'
-- turn ends update one shared row. Setting a business quota fills its current month from
-- usage_user_days in the same transaction (UsageStore.set_quota, SET_BUSINESS_DAYS_SQL); clearing
-- the last one leaves its rows, no longer kept and never read (a quota set again refills the month).
--
-- Why a set quota neither loses nor counts twice a turn's usage that ends meanwhile. The fill
-- (UsageStore.set_quota) is, in one transaction: the business's locks, taken exclusively
-- ('usage_business:' || id, start_chat_turn's, so no turn of it is being checked meanwhile; then
-- 'usage_business_days:' || id); the quota row; then, in a statement of its own and so a snapshot
-- taken after both locks were granted, each day's row set to (not added to) the sum of its users'
-- days. Every ledger row's trigger takes 'usage_business_days:' || id in shared mode before it
-- writes any total (turn ends do not wait for each other, a business without a quota never waits
-- for anything: only a fill takes it exclusively). So a turn end (a transaction that writes ledger
-- rows) of the business is either
--   * under way when the fill asks for the lock: the fill waits for it to commit, and its sum sees
--     that turn's user days. If the business already had a quota, the turn also added to
--     usage_business_days; the fill replaces that row with the sum, which holds it once. Without
--     the lock, a turn that read "no business quota" before the quota's commit and committed its
--     user days after the fill's snapshot would be in neither: lost; and a turn's increment of a row
--     the fill then overwrote (the row lock makes the fill wait, not re-read its sum) would go too.
--   * or asks for the lock after the fill took it: it waits until the fill commits, then (each
--     statement of the trigger, a volatile function, reads with a snapshot of its own) sees the
--     quota and adds its rows on top of the filled sums, which could not have seen its user days.
-- start_chat_turn's lock alone would not do: a turn's end does not take it. Nor should it (shared):
-- a start holds it while it locks the session's rows that a turn end of the same session may hold
-- while it waits for it, a deadlock; 'usage_business_days:' is taken by nothing else but a fill.
-- A database-wide alternative, `lock table usage_ledger in share mode` in the fill, costs no turn
-- anything but stalls every business's turn ends while one quota is set.

create table if not exists public.usage_business_days (
    business_id         text    not null,
    day                 date    not null,
    calls               integer not null default 0,
    input_tokens        bigint  not null default 0,
    cached_input_tokens bigint  not null default 0,
    output_tokens       bigint  not null default 0,
    reasoning_tokens    bigint  not null default 0,
    cost_micros         bigint  not null default 0,
    primary key (business_id, day)
);

-- The ledger's totals (sql/024's trigger function), and the day of a business that has a quota.
create or replace function public.usage_ledger_add_totals()
returns trigger
language plpgsql
set search_path = ''
as $$
begin
    -- Shared: turn ends never wait for each other here; only a business quota being set (which takes
    -- it exclusively, UsageStore.set_quota) waits for this transaction, or makes it wait (see the top of this file).
    perform pg_advisory_xact_lock_shared(hashtextextended('usage_business_days:' || new.business_id, 0));
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
    -- A business with a quota: its day in one row, what its quota check reads (usage_quotas by its
    -- primary key's prefix). A business without one writes nothing here (no row all its users update).
    if exists (select 1 from public.usage_quotas q where q.scope = 'business' and q.scope_id = new.business_id) then
        insert into public.usage_business_days as t (business_id, day, calls, input_tokens, cached_input_tokens,
                                                     output_tokens, reasoning_tokens, cost_micros)
        values (new.business_id, (new.created_at at time zone 'UTC')::date, 1, new.input_tokens,
                new.cached_input_tokens, new.output_tokens, coalesce(new.reasoning_tokens, 0), new.cost_micros)
        on conflict (business_id, day) do update
           set calls = t.calls + 1, input_tokens = t.input_tokens + excluded.input_tokens,
               cached_input_tokens = t.cached_input_tokens + excluded.cached_input_tokens,
               output_tokens = t.output_tokens + excluded.output_tokens,
               reasoning_tokens = t.reasoning_tokens + excluded.reasoning_tokens,
               cost_micros = t.cost_micros + excluded.cost_micros;
    end if;
    return null;
end;
$$;

-- What a scope used in the period that holds p_now (UTC days and months), and what live turns
-- reserved: index range reads (usage_user_days' or usage_business_days' primary key; the
-- reservations'). It is asked only about quotas that exist (usage_quota_state), so a business's
-- days are kept.
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
          from public.usage_business_days t where t.business_id = p_scope_id and t.day >= first_day;
        select coalesce(sum(r.tokens), 0), coalesce(sum(r.cost_micros), 0) into held_tokens, held_cost
          from public.usage_reservations r where r.business_id = p_scope_id and r.expires_at > now();
    end if;
    tokens := used_tokens + held_tokens;
    cost_micros := used_cost + held_cost;
    return next;
end;
$$;

-- sql/026's start_chat_turn (same parameters, results, locks and reservations), the business's
-- day and month read from usage_business_days.
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
    input_estimate bigint;
    history bigint;
    tokens_room bigint;
    cost_room bigint;
    grant_tokens bigint;
    reset_at timestamptz;
    started record;
    p_business_id text;
    first_day date := (p_now at time zone 'UTC')::date;
    first_of_month date := (date_trunc('month', p_now at time zone 'UTC'))::date;
    -- The limits (null: none) of the user's and the business's day and month quotas.
    user_day_tokens bigint;
    user_day_cost bigint;
    user_month_tokens bigint;
    user_month_cost bigint;
    business_day_tokens bigint;
    business_day_cost bigint;
    business_month_tokens bigint;
    business_month_cost bigint;
    user_has_day boolean;
    user_has_month boolean;
    business_quota boolean;
    -- What a scope used this day and month, and what its live turns hold.
    day_tokens bigint;
    day_cost bigint;
    month_tokens bigint;
    month_cost bigint;
    held_tokens bigint;
    held_cost bigint;
begin
    select s.business_id, s.history_bytes into p_business_id, history from public.chat_sessions s
     where s.user_id = p_user_id and s.session_id = p_session_id;
    if not found then
        return;  -- created on first use, then tried again
    end if;
    select max(x.max_tokens) filter (where x.scope = 'user' and x.period = 'day'),
           max(x.max_cost_micros) filter (where x.scope = 'user' and x.period = 'day'),
           max(x.max_tokens) filter (where x.scope = 'user' and x.period = 'month'),
           max(x.max_cost_micros) filter (where x.scope = 'user' and x.period = 'month'),
           max(x.max_tokens) filter (where x.scope = 'business' and x.period = 'day'),
           max(x.max_cost_micros) filter (where x.scope = 'business' and x.period = 'day'),
           max(x.max_tokens) filter (where x.scope = 'business' and x.period = 'month'),
           max(x.max_cost_micros) filter (where x.scope = 'business' and x.period = 'month'),
           coalesce(bool_or(x.scope = 'user' and x.period = 'day'), false),
           coalesce(bool_or(x.scope = 'user' and x.period = 'month'), false)
      into user_day_tokens, user_day_cost, user_month_tokens, user_month_cost, business_day_tokens,
           business_day_cost, business_month_tokens, business_month_cost, user_has_day, user_has_month
      from public.usage_quotas x
     where (x.scope = 'user' and x.scope_id = p_user_id) or (x.scope = 'business' and x.scope_id = p_business_id);
    -- The defaults ({"day": {"tokens", "cost_micros"}, "month": {...}}) hold for periods the user has no row for.
    if not user_has_day then
        user_day_tokens := nullif(p_defaults -> 'day' ->> 'tokens', '')::bigint;
        user_day_cost := nullif(p_defaults -> 'day' ->> 'cost_micros', '')::bigint;
    end if;
    if not user_has_month then
        user_month_tokens := nullif(p_defaults -> 'month' ->> 'tokens', '')::bigint;
        user_month_cost := nullif(p_defaults -> 'month' ->> 'cost_micros', '')::bigint;
    end if;
    business_quota := coalesce(business_day_tokens, business_day_cost, business_month_tokens,
                               business_month_cost) is not null;
    if not business_quota
       and coalesce(user_day_tokens, user_day_cost, user_month_tokens, user_month_cost) is null then
        for started in select * from public.start_chat_run(p_user_id, p_session_id, p_run_id, p_owner,
                p_lease_seconds, p_max_messages, p_max_bytes, p_max_runs, p_query) loop
            session_row := started.session_row;
            new_run_id := started.new_run_id;
            blocked := false;
            return next;
        end loop;
        return;
    end if;
    -- Under the business's lock (when it has a quota) and then the user's, concurrent turns see
    -- each other's reservations.
    if business_quota then
        perform pg_advisory_xact_lock(hashtextextended('usage_business:' || p_business_id, 0));
    end if;
    perform pg_advisory_xact_lock(hashtextextended('chat_session_runs:' || p_user_id, 0));
    input_estimate := least(coalesce(p_context_tokens, 2147483647), (history + octet_length(coalesce(p_query, ''))) / 4 + 1);
    -- What each quota leaves (least() skips the nulls of periods without a limit).
    if coalesce(user_day_tokens, user_day_cost, user_month_tokens, user_month_cost) is not null then
        select coalesce(sum(t.input_tokens + t.output_tokens) filter (where t.day >= first_day), 0),
               coalesce(sum(t.cost_micros) filter (where t.day >= first_day), 0),
               coalesce(sum(t.input_tokens + t.output_tokens), 0), coalesce(sum(t.cost_micros), 0)
          into day_tokens, day_cost, month_tokens, month_cost
          from public.usage_user_days t where t.user_id = p_user_id and t.day >= first_of_month;
        select coalesce(sum(r.tokens), 0), coalesce(sum(r.cost_micros), 0) into held_tokens, held_cost
          from public.usage_reservations r where r.user_id = p_user_id and r.expires_at > now();
        tokens_room := least(user_day_tokens - day_tokens - held_tokens, user_month_tokens - month_tokens - held_tokens);
        cost_room := least(user_day_cost - day_cost - held_cost, user_month_cost - month_cost - held_cost);
    end if;
    if business_quota then
        -- The business's own days (usage_business_days, kept while it has a quota): one primary-key
        -- range read, today's row alone or at most the month's 31, however many users it has.
        select coalesce(sum(t.input_tokens + t.output_tokens) filter (where t.day >= first_day), 0),
               coalesce(sum(t.cost_micros) filter (where t.day >= first_day), 0),
               coalesce(sum(t.input_tokens + t.output_tokens), 0), coalesce(sum(t.cost_micros), 0)
          into day_tokens, day_cost, month_tokens, month_cost
          from public.usage_business_days t
         where t.business_id = p_business_id
           and t.day >= case when coalesce(business_month_tokens, business_month_cost) is null
                             then first_day else first_of_month end;
        select coalesce(sum(r.tokens), 0), coalesce(sum(r.cost_micros), 0) into held_tokens, held_cost
          from public.usage_reservations r where r.business_id = p_business_id and r.expires_at > now();
        tokens_room := least(tokens_room, business_day_tokens - day_tokens - held_tokens,
                             business_month_tokens - month_tokens - held_tokens);
        cost_room := least(cost_room, business_day_cost - day_cost - held_cost,
                           business_month_cost - month_cost - held_cost);
    end if;
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

alter table public.usage_business_days enable row level security;

revoke execute on function public.usage_ledger_add_totals() from public;
revoke execute on function public.usage_used(text, text, text, timestamptz) from public;
revoke execute on function public.start_chat_turn(text, text, uuid, text, double precision, integer, bigint, integer,
    text, timestamptz, jsonb, integer, integer, double precision, double precision, double precision) from public;

do $$
declare
    role_name text;
begin
    foreach role_name in array array['anon', 'authenticated'] loop
        if exists (select 1 from pg_roles where rolname = role_name) then
            execute format('revoke all on public.usage_business_days from %I', role_name);
            execute format('revoke execute on function public.usage_ledger_add_totals(), '
                           'public.usage_used(text, text, text, timestamptz), '
                           'public.start_chat_turn(text, text, uuid, text, double precision, integer, bigint, integer, '
                           'text, timestamptz, jsonb, integer, integer, double precision, double precision, '
                           'double precision) from %I', role_name);
        end if;
    end loop;
end;
$$;
