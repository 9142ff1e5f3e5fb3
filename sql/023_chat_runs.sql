-- Replies that outlive their connection: a run's text so far, and its end kept
-- for RUN_REPLAY_SECONDS, so any tab on any process can join or resume it.
--
-- While a reply is written, its lease row (chat_session_runs) carries the text
-- so far: the owning process writes it in its lease renewal, one statement for
-- all of its replies every RUN_RENEW_SECONDS (never a write per token). Readers
-- in the owning process read the reply from memory; readers elsewhere read this.
--
-- When the lease row goes, a deferred trigger keeps the run in chat_runs: its
-- whole text and the terminal event its readers get, with the session row as
-- committed (so `done` carries the final message count and name). The backend
-- names the end for the transaction that ends the run
-- (set_config('chat.run_final', '{"status", "event", "data", "reply"}', true));
-- a run ended any other way while its session stays (its process died, its
-- lease taken over) is kept as interrupted; a run whose session is deleted
-- leaves nothing.

alter table public.chat_session_runs
    add column if not exists reply text not null default '',
    -- Why a cancel was asked for: 'delete' (a forced delete) or 'user' (Stop).
    add column if not exists cancel_reason text,
    -- The user's message, so it is kept even if the process dies before the turn writes it.
    add column if not exists query text;

-- A turn's start (sql/017) now also keeps the user's message with the lease.
drop function if exists public.start_chat_run(text, text, uuid, text, double precision, integer, bigint, integer);
create or replace function public.start_chat_run(
    p_user_id       text,
    p_session_id    text,
    p_run_id        uuid,
    p_owner         text,
    p_lease_seconds double precision,
    p_max_messages  integer,
    p_max_bytes     bigint,
    p_max_runs      integer,
    p_query         text
)
returns table (session_row public.chat_sessions, new_run_id uuid)
language plpgsql
set search_path = ''
as $$
declare
    found_session public.chat_sessions;
    taken uuid;
begin
    -- Per user, so a burst of starts cannot pass the per-user cap together.
    perform pg_advisory_xact_lock(hashtextextended('chat_session_runs:' || p_user_id, 0));
    select * into found_session
      from public.chat_sessions s where s.user_id = p_user_id and s.session_id = p_session_id;
    if not found then
        return;
    end if;
    if not found_session.is_archived
       and found_session.message_count < p_max_messages
       and found_session.history_bytes < p_max_bytes
       and (select count(*) from public.chat_session_runs r
             where r.user_id = p_user_id and r.lease_expires_at > now()) < p_max_runs then
        insert into public.chat_session_runs as r (user_id, session_id, run_id, owner, lease_expires_at, query)
        values (p_user_id, p_session_id, p_run_id, p_owner, now() + make_interval(secs => p_lease_seconds), p_query)
        on conflict (user_id, session_id) do update
           set run_id = excluded.run_id, owner = excluded.owner, started_at = now(),
               lease_expires_at = excluded.lease_expires_at, cancel_requested_at = null,
               cancel_reason = null, reply = '', query = excluded.query
         where r.lease_expires_at < now()
        returning r.run_id into taken;
    end if;
    session_row := found_session;
    new_run_id := taken;
    return next;
end;
$$;

-- Only the backend may call it: not the Data API's anon or authenticated roles.
revoke execute on function public.start_chat_run(text, text, uuid, text, double precision, integer, bigint, integer, text)
    from public;
do $$
begin
    if exists (select 1 from pg_roles where rolname = 'anon') then
        execute 'revoke execute on function public.start_chat_run(text, text, uuid, text, double precision, integer, bigint, integer, text) from anon';
    end if;
    if exists (select 1 from pg_roles where rolname = 'authenticated') then
        execute 'revoke execute on function public.start_chat_run(text, text, uuid, text, double precision, integer, bigint, integer, text) from authenticated';
    end if;
end;
$$;

-- One index only (its key): every read names the user and session, and a turn's end inserts a
-- row here, so each index more is paid by every turn. Upkeep's purge by age scans the table,
-- which holds only the runs of the last RUN_REPLAY_SECONDS.
create table if not exists public.chat_runs (
    user_id     text        not null,
    session_id  text        not null,
    run_id      uuid        not null,
    status      text        not null,
    started_at  timestamptz not null,
    ended_at    timestamptz not null default now(),
    -- The reply as its readers got it: their token events concatenate to this.
    reply       text        not null default '',
    -- The terminal event: 'done' with {session_id, message_count, session_name, run_id},
    -- or 'error' with {code, message, run_id}.
    final_event text        not null,
    final_data  jsonb       not null,
    constraint chat_runs_status_check check (status in ('done', 'error', 'cancelled', 'interrupted')),
    constraint chat_runs_final_event_check check (final_event in ('done', 'error')),
    primary key (user_id, session_id, run_id),
    foreign key (user_id, session_id) references public.chat_sessions (user_id, session_id)
        on delete cascade on update cascade
);


alter table public.chat_runs enable row level security;

create or replace function public.chat_session_runs_keep_ended()
returns trigger
language plpgsql
set search_path = ''
as $$
declare
    final jsonb := nullif(current_setting('chat.run_final', true), '')::jsonb;
    s public.chat_sessions;
begin
    select * into s from public.chat_sessions
     where user_id = old.user_id and session_id = old.session_id;
    if not found then
        return null;  -- the session was deleted: its runs go with it
    end if;
    if tg_op = 'UPDATE' or final is null or final->>'run_id' is distinct from old.run_id::text then
        final := jsonb_build_object(
            'status', 'interrupted', 'event', 'error',
            'data', jsonb_build_object('code', 'interrupted',
                                       'message', 'The reply was interrupted: the server writing it stopped'));
    end if;
    insert into public.chat_runs (run_id, user_id, session_id, status, started_at, reply, final_event, final_data)
    values (
        old.run_id, old.user_id, old.session_id, final->>'status', old.started_at,
        coalesce(final->>'reply', old.reply), final->>'event',
        case when final->>'event' = 'done'
             then jsonb_build_object('session_id', s.session_id, 'message_count', s.message_count,
                                     'session_name', s.session_name, 'run_id', old.run_id)
             else coalesce(final->'data', '{}'::jsonb) || jsonb_build_object('run_id', old.run_id)
        end)
    on conflict do nothing;
    return null;
end;
$$;

drop trigger if exists chat_session_runs_keep_ended on public.chat_session_runs;
create constraint trigger chat_session_runs_keep_ended
    after delete on public.chat_session_runs
    deferrable initially deferred
    for each row execute function public.chat_session_runs_keep_ended();

-- A lease taken over from a dead process: the old run was interrupted.
drop trigger if exists chat_session_runs_keep_taken_over on public.chat_session_runs;
create constraint trigger chat_session_runs_keep_taken_over
    after update of run_id on public.chat_session_runs
    deferrable initially deferred
    for each row when (old.run_id is distinct from new.run_id)
    execute function public.chat_session_runs_keep_ended();

-- run.started and run.finished name their run, so another tab can join it with one request.
create or replace function public.chat_session_runs_emit_event()
returns trigger
language plpgsql
set search_path = ''
as $$
begin
    if tg_op = 'INSERT' or (tg_op = 'UPDATE' and new.run_id is distinct from old.run_id) then
        perform public.emit_session_event(new.user_id, new.session_id, 'run.started', jsonb_build_object(
            'run_id', new.run_id,
            'session', (select to_jsonb(s) from public.chat_sessions s
                         where s.user_id = new.user_id and s.session_id = new.session_id)));
    elsif tg_op = 'DELETE' then
        perform public.emit_session_event(old.user_id, old.session_id, 'run.finished', jsonb_build_object(
            'run_id', old.run_id,
            'outcome', coalesce(nullif(current_setting('chat.run_outcome', true), ''), 'cancelled'),
            'session', (select to_jsonb(s) from public.chat_sessions s
                         where s.user_id = old.user_id and s.session_id = old.session_id)));
    end if;
    return null;
end;
$$;

revoke execute on function public.chat_session_runs_keep_ended() from public;
do $$
begin
    if exists (select 1 from pg_roles where rolname = 'anon') then
        execute 'revoke all on public.chat_runs from anon';
        execute 'revoke execute on function public.chat_session_runs_keep_ended() from anon';
    end if;
    if exists (select 1 from pg_roles where rolname = 'authenticated') then
        execute 'revoke all on public.chat_runs from authenticated';
        execute 'revoke execute on function public.chat_session_runs_keep_ended() from authenticated';
    end if;
end;
$$;

-- Messages sent with multitask_strategy=enqueue while a reply runs: each waits here (durably:
-- its client may go away) until the session is free, then whichever process ends the run
-- before it (or upkeep) starts it under its own run id.
create table if not exists public.chat_queued_runs (
    run_id      uuid        primary key,
    user_id     text        not null,
    session_id  text        not null,
    query       text        not null,
    created_at  timestamptz not null default now(),
    foreign key (user_id, session_id) references public.chat_sessions (user_id, session_id)
        on delete cascade on update cascade
);

create index if not exists chat_queued_runs_session_idx on public.chat_queued_runs (user_id, session_id, created_at);

alter table public.chat_queued_runs enable row level security;

do $$
begin
    if exists (select 1 from pg_roles where rolname = 'anon') then
        execute 'revoke all on public.chat_queued_runs from anon';
    end if;
    if exists (select 1 from pg_roles where rolname = 'authenticated') then
        execute 'revoke all on public.chat_queued_runs from authenticated';
    end if;
end;
$$;

-- run.queued: a message waits behind the session's reply (another tab can show it, and join it).
alter table public.session_events drop constraint if exists session_events_type_check;
alter table public.session_events add constraint session_events_type_check check (type in
    ('session.created', 'session.updated', 'session.deleted', 'run.started', 'run.finished', 'run.queued'));

create or replace function public.chat_queued_runs_emit_event()
returns trigger
language plpgsql
set search_path = ''
as $$
begin
    perform public.emit_session_event(new.user_id, new.session_id, 'run.queued', jsonb_build_object(
        'run_id', new.run_id,
        'session', (select to_jsonb(s) from public.chat_sessions s
                     where s.user_id = new.user_id and s.session_id = new.session_id)));
    return null;
end;
$$;

drop trigger if exists chat_queued_runs_emit_event on public.chat_queued_runs;
create constraint trigger chat_queued_runs_emit_event
    after insert on public.chat_queued_runs
    deferrable initially deferred
    for each row execute function public.chat_queued_runs_emit_event();

revoke execute on function public.chat_queued_runs_emit_event() from public;

-- A turn's end (sql/018) also says whether a message is queued behind it.
drop function if exists public.end_chat_run(text, text, uuid, text, text, integer, bigint);
create or replace function public.end_chat_run(
    p_user_id       text,
    p_session_id    text,
    p_run_id        uuid,
    p_outcome       text,
    p_checkpoint_id text,
    p_message_count integer,
    p_history_bytes bigint
)
returns table (session_row public.chat_sessions, counted boolean, queued boolean)
language plpgsql
set search_path = ''
as $$
declare
    found_session public.chat_sessions;
    latest text;
begin
    select * into found_session
      from public.chat_sessions s where s.user_id = p_user_id and s.session_id = p_session_id
       for update;
    if not found then
        return;
    end if;
    select c.checkpoint_id into latest
      from public.checkpoints c
     where c.thread_id = found_session.thread_id and c.checkpoint_ns = ''
     order by c.checkpoint_id desc
     limit 1;
    if p_checkpoint_id is null or latest is distinct from p_checkpoint_id then
        session_row := found_session;
        counted := false;
        queued := false;
        return next;
        return;
    end if;
    -- The session first, then the run: their events go out in that order
    -- (session.updated with the final count, then run.finished).
    if p_message_count > found_session.message_count then
        perform public.increment_session_message_count(
            p_user_id, p_session_id, p_message_count - found_session.message_count);
    end if;
    update public.chat_sessions s
       set has_unread = s.has_unread or p_outcome = 'done',
           message_count = p_message_count,  -- only a custom graph that removes messages lowers it
           history_bytes = p_history_bytes
     where s.id = found_session.id
    returning s.* into found_session;
    perform set_config('chat.run_outcome', p_outcome, true);
    delete from public.chat_session_runs r where r.run_id = p_run_id;
    session_row := found_session;
    counted := true;
    -- After the delete (which waits for an enqueue holding the lease row), in a new snapshot:
    -- a message queued behind this run is seen, so the ender starts it.
    queued := exists (select 1 from public.chat_queued_runs q
                       where q.user_id = p_user_id and q.session_id = p_session_id);
    return next;
end;
$$;

-- Only the backend may call it: not the Data API's anon or authenticated roles.
revoke execute on function public.end_chat_run(text, text, uuid, text, text, integer, bigint) from public;
do $$
begin
    if exists (select 1 from pg_roles where rolname = 'anon') then
        execute 'revoke execute on function public.end_chat_run(text, text, uuid, text, text, integer, bigint) from anon';
    end if;
    if exists (select 1 from pg_roles where rolname = 'authenticated') then
        execute 'revoke execute on function public.end_chat_run(text, text, uuid, text, text, integer, bigint) from authenticated';
    end if;
end;
$$;
