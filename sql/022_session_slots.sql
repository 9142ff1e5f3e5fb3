-- The per-user cap on sessions (MAX_SESSIONS_PER_USER), one mechanism for
-- every way a session comes to be: a create, a chat turn's create on first use,
-- an import, a restore. Each calls this in the transaction (or the statement)
-- that inserts the session, and inserts only when it returns true.
--
-- The user's lock (transaction-scoped) makes the check and the insert after
-- it one step: two creators of one user run one after the other, so a burst
-- by every path at once cannot pass the cap together. The count is read after
-- the lock is granted (in a function each statement takes a new snapshot), so
-- it sees every session that a creator before it committed. It is the count
-- the triggers of 014_session_counts.sql keep; deletes take no part (they only
-- lower it), so a delete never waits for this lock.
create or replace function public.claim_session_slot(p_user_id text, p_max_sessions integer)
returns boolean
language plpgsql
volatile
set search_path = ''
as $$
begin
    perform pg_advisory_xact_lock(hashtextextended('chat_sessions:' || p_user_id, 0));
    return coalesce((select c.sessions from public.chat_session_counts c where c.user_id = p_user_id), 0)
           < p_max_sessions;
end;
$$;

-- Only the backend may call it: not the Data API's anon or authenticated roles.
revoke execute on function public.claim_session_slot(text, integer) from public;
do $$
begin
    if exists (select 1 from pg_roles where rolname = 'anon') then
        execute 'revoke execute on function public.claim_session_slot(text, integer) from anon';
    end if;
    if exists (select 1 from pg_roles where rolname = 'authenticated') then
        execute 'revoke execute on function public.claim_session_slot(text, integer) from authenticated';
    end if;
end;
$$;
