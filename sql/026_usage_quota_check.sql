-- A turn's quota check in fewer, simpler statements (sql/024's start_chat_turn: same parameters,
-- same results, same locks and reservations).
--
-- sql/024 read what each quota leaves through usage_quota_state: a plpgsql loop over the quotas
-- (a union with the defaults through jsonb_each) that calls usage_used once per quota, each a read
-- of the period's days and a read of the live reservations. With a day and a month quota: two
-- nested function calls and seven statements per turn, the same month of days and the same
-- reservations read twice. Here the quota rows are read once (the read that said whether any
-- applies now returns their limits too), the defaults fill the user's missing periods as plain
-- expressions, and each scope that has a limit is read once: a user's month of days (the day's
-- sums are of the same rows, at most 31), a business's days of each period it limits, and the
-- scope's reservations. A scope without a limit is not read at all, and the
-- business's advisory lock is taken only when the business has a quota (user quotas alone need only
-- the user's lock, so a business's users no longer queue behind each other). The refusal path, rare,
-- still asks usage_quota_state when the exhausted quotas reset.
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
        -- A business's days are its active users' (many rows): each period with a limit read on its own.
        day_tokens := null;
        day_cost := null;
        month_tokens := null;
        month_cost := null;
        if coalesce(business_day_tokens, business_day_cost) is not null then
            select coalesce(sum(t.input_tokens + t.output_tokens), 0), coalesce(sum(t.cost_micros), 0)
              into day_tokens, day_cost
              from public.usage_user_days t where t.business_id = p_business_id and t.day >= first_day;
        end if;
        if coalesce(business_month_tokens, business_month_cost) is not null then
            select coalesce(sum(t.input_tokens + t.output_tokens), 0), coalesce(sum(t.cost_micros), 0)
              into month_tokens, month_cost
              from public.usage_user_days t where t.business_id = p_business_id and t.day >= first_of_month;
        end if;
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

revoke execute on function public.start_chat_turn(text, text, uuid, text, double precision, integer, bigint, integer,
    text, timestamptz, jsonb, integer, integer, double precision, double precision, double precision) from public;

do $$
declare
    role_name text;
begin
    foreach role_name in array array['anon', 'authenticated'] loop
        if exists (select 1 from pg_roles where rolname = role_name) then
            execute format('revoke execute on function public.start_chat_turn(text, text, uuid, text, '
                           'double precision, integer, bigint, integer, text, timestamptz, jsonb, integer, integer, '
                           'double precision, double precision, double precision) from %I', role_name);
        end if;
    end loop;
end;
$$;
