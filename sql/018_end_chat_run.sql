-- A turn's end in one round trip, when the backend already knows the size of
-- the history the turn left: the checkpoint it wrote last, and that
-- checkpoint's message count and bytes, measured from the messages it wrote.
--
-- Under the session row's lock (FOR UPDATE: every checkpoint write takes FOR
-- KEY SHARE on it, so none lands until commit), if the thread's latest
-- checkpoint is that one, the run row goes (its run.finished event says
-- p_outcome), a finished reply marks the session unread, and the counts move
-- to the given values (up through increment_session_message_count, as every
-- count does). Returns the session row and counted = true.
--
-- If another checkpoint is the latest (or the caller knows none), nothing is
-- changed: counted = false, and the caller counts the way it always did,
-- reading the history in a transaction of its own. No row: no such session.
--
-- The backend used to do all of it in one transaction of eight round trips,
-- one of them reading and decoding the whole conversation back.

create or replace function public.end_chat_run(
    p_user_id       text,
    p_session_id    text,
    p_run_id        uuid,
    p_outcome       text,
    p_checkpoint_id text,
    p_message_count integer,
    p_history_bytes bigint
)
returns table (session_row public.chat_sessions, counted boolean)
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
