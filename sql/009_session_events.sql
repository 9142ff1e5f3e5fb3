-- Live events for every tab: what changed in a user's sessions, written by
-- triggers in the changing transaction itself, so an event exists exactly when
-- its change committed (never for a rolled-back one), whichever process or
-- tool made it. pg_notify in the same transaction wakes the listening server
-- processes on commit; its payload is only the user id (NOTIFY payloads are
-- limited to 8,000 bytes); the events themselves are read from this table by
-- cursor, which is also how a reconnecting client catches up.
--
-- Ids are assigned in commit order: the triggers run at commit (deferred)
-- and first take a transaction-scoped advisory lock, held until the commit
-- ends, so a reader that has seen id N never later meets a smaller id.

create table if not exists public.session_events (
    id          bigint generated always as identity primary key,
    user_id     text        not null,
    session_id  text        not null,
    type        text        not null,
    -- session.created / session.updated: the session row; session.deleted:
    -- {deleted, forced}; run.finished: {outcome}.
    payload     jsonb       not null default '{}'::jsonb,
    created_at  timestamptz not null default now(),
    constraint session_events_type_check check (type in
        ('session.created', 'session.updated', 'session.deleted', 'run.started', 'run.finished'))
);

create index if not exists session_events_user_idx on public.session_events (user_id, id);
create index if not exists session_events_created_idx on public.session_events (created_at);

-- How far retention has purged: a cursor below it may have missed events.
create table if not exists public.session_events_purged (
    singleton boolean primary key default true check (singleton),
    upto      bigint  not null default 0
);
insert into public.session_events_purged (singleton, upto) values (true, 0) on conflict do nothing;

alter table public.session_events enable row level security;
alter table public.session_events_purged enable row level security;

-- The unread flag: set when an assistant reply finishes, cleared by the user.
alter table public.chat_sessions add column if not exists has_unread boolean not null default false;

create or replace function public.emit_session_event(p_user_id text, p_session_id text, p_type text, p_payload jsonb)
returns void
language plpgsql
set search_path = ''
as $$
begin
    -- One lock for every emitting transaction, whatever users it touches (a
    -- lock per user would fill the lock table in a bulk load): held only from
    -- the commit-time triggers to the end of the commit, it is short.
    perform pg_advisory_xact_lock(7241009);
    insert into public.session_events (user_id, session_id, type, payload, created_at)
    values (p_user_id, p_session_id, p_type, coalesce(p_payload, '{}'::jsonb), clock_timestamp());
    perform pg_notify('session_events', p_user_id);
end;
$$;

-- Deferred to commit, with the row as it is then; updates once per session
-- and transaction: a turn's end (count, unread flag) is one event carrying
-- the final state. (A row inserted and then updated in one transaction, as an
-- import is, gives session.created and one session.updated, both final.) Only changes a client can see
-- count: not naming claims, lease renewals or timestamps alone.
create or replace function public.chat_sessions_emit_event()
returns trigger
language plpgsql
set search_path = ''
as $$
declare
    seen_key text := 'chat.session_event_' || new.id;
    current_row jsonb;
begin
    if tg_op = 'UPDATE'
       and (new.session_name, new.is_archived, new.message_count, new.last_message_at, new.has_unread)
           is not distinct from
           (old.session_name, old.is_archived, old.message_count, old.last_message_at, old.has_unread) then
        return null;
    end if;
    -- Updates only: a custom setting per row is a linear insert on PostgreSQL
    -- 15 and older (a bulk insert would be quadratic), and an insert fires once.
    if tg_op = 'UPDATE' then
        if current_setting(seen_key, true) = 'sent' then
            return null;
        end if;
        perform set_config(seen_key, 'sent', true);
    end if;
    select to_jsonb(s) into current_row from public.chat_sessions s where s.id = new.id;
    if current_row is null then
        return null;  -- deleted later in the same transaction: its delete speaks for it
    end if;
    perform public.emit_session_event(new.user_id, new.session_id,
        case when tg_op = 'INSERT' then 'session.created' else 'session.updated' end, current_row);
    return null;
end;
$$;

drop trigger if exists chat_sessions_emit_event on public.chat_sessions;
create constraint trigger chat_sessions_emit_event
    after insert or update on public.chat_sessions
    deferrable initially deferred
    for each row execute function public.chat_sessions_emit_event();

-- A delete is announced from its audit row, which knows the counts and force.
create or replace function public.session_deletions_emit_event()
returns trigger
language plpgsql
set search_path = ''
as $$
begin
    if new.action = 'delete' then
        perform public.emit_session_event(new.user_id, new.session_id, 'session.deleted',
            jsonb_build_object('deleted', new.rows_deleted, 'forced', new.forced));
    end if;
    return null;
end;
$$;

drop trigger if exists session_deletions_emit_event on public.session_deletions;
create constraint trigger session_deletions_emit_event
    after insert on public.session_deletions
    deferrable initially deferred
    for each row execute function public.session_deletions_emit_event();

-- Replies: started when a run takes the session, finished when it lets go.
-- The backend names the outcome for the transaction that ends the run
-- (set_config('chat.run_outcome', ..., true)); a run ended any other way
-- (its session deleted, its process dead) says so.
create or replace function public.chat_session_runs_emit_event()
returns trigger
language plpgsql
set search_path = ''
as $$
begin
    if tg_op = 'INSERT' or (tg_op = 'UPDATE' and new.run_id is distinct from old.run_id) then
        perform public.emit_session_event(new.user_id, new.session_id, 'run.started', jsonb_build_object(
            'session', (select to_jsonb(s) from public.chat_sessions s
                         where s.user_id = new.user_id and s.session_id = new.session_id)));
    elsif tg_op = 'DELETE' then
        perform public.emit_session_event(old.user_id, old.session_id, 'run.finished', jsonb_build_object(
            'outcome', coalesce(nullif(current_setting('chat.run_outcome', true), ''), 'cancelled'),
            'session', (select to_jsonb(s) from public.chat_sessions s
                         where s.user_id = old.user_id and s.session_id = old.session_id)));
    end if;
    return null;
end;
$$;

drop trigger if exists chat_session_runs_emit_event on public.chat_session_runs;
create constraint trigger chat_session_runs_emit_event
    after insert or update or delete on public.chat_session_runs
    deferrable initially deferred
    for each row execute function public.chat_session_runs_emit_event();

do $$
begin
    if to_regprocedure('auth.uid()') is not null
       and exists (select 1 from pg_roles where rolname = 'authenticated') then
        execute 'drop policy if exists session_events_select_own on public.session_events';
        execute 'create policy session_events_select_own on public.session_events
                 for select to authenticated
                 using (user_id = (select auth.uid())::text)';
    end if;
    if exists (select 1 from pg_roles where rolname = 'anon') then
        execute 'revoke all on public.session_events_purged from anon';
        execute 'revoke execute on function public.emit_session_event(text, text, text, jsonb) from anon';
    end if;
    if exists (select 1 from pg_roles where rolname = 'authenticated') then
        execute 'revoke all on public.session_events_purged from authenticated';
        execute 'revoke execute on function public.emit_session_event(text, text, text, jsonb) from authenticated';
    end if;
end;
$$;

revoke execute on function public.emit_session_event(text, text, text, jsonb) from public;
