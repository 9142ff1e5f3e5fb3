-- A turn's start in one round trip: read the session and, unless it is
-- archived or full or the user has as many replies being written as they may,
-- take its lease (a row in chat_session_runs; an expired lease, left by a dead
-- process, is taken over). Returns the session row and the new run's id (null
-- when no lease was taken), or no row when the user has no such session.
--
-- The backend used to send this as two statements in a transaction (the
-- user's lock, then the rest): two round trips to the database before every
-- first token. In a function each statement takes a new snapshot, so the
-- count of the user's live runs, made after the lock is granted, sees every
-- run committed before it, as the second statement did.
create or replace function public.start_chat_run(
    p_user_id       text,
    p_session_id    text,
    p_run_id        uuid,
    p_owner         text,
    p_lease_seconds double precision,
    p_max_messages  integer,
    p_max_bytes     bigint,
    p_max_runs      integer
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
        insert into public.chat_session_runs as r (user_id, session_id, run_id, owner, lease_expires_at)
        values (p_user_id, p_session_id, p_run_id, p_owner, now() + make_interval(secs => p_lease_seconds))
        on conflict (user_id, session_id) do update
           set run_id = excluded.run_id, owner = excluded.owner, started_at = now(),
               lease_expires_at = excluded.lease_expires_at, cancel_requested_at = null
         where r.lease_expires_at < now()
        returning r.run_id into taken;
    end if;
    session_row := found_session;
    new_run_id := taken;
    return next;
end;
$$;

-- Only the backend may call it: not the Data API's anon or authenticated roles.
revoke execute on function public.start_chat_run(text, text, uuid, text, double precision, integer, bigint, integer)
    from public;
do $$
begin
    if exists (select 1 from pg_roles where rolname = 'anon') then
        execute 'revoke execute on function public.start_chat_run(text, text, uuid, text, double precision, integer, bigint, integer) from anon';
    end if;
    if exists (select 1 from pg_roles where rolname = 'authenticated') then
        execute 'revoke execute on function public.start_chat_run(text, text, uuid, text, double precision, integer, bigint, integer) from authenticated';
    end if;
end;
$$;
