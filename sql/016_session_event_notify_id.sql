-- The wake-up for a new event names its id as well as its user:
-- NOTIFY session_events, '<id> <user id>'. Each server process keeps the
-- highest id it has heard of, so a client that opens the events stream "from
-- now" (no Last-Event-ID) starts there without a query: a reconnect storm of
-- thousands of tabs after a deploy costs the database nothing. Ids are given
-- in commit order (sql/009), so nothing committed later can have a smaller id.
-- A server that reads the old payload (the user id alone) still wakes the
-- right streams.
create or replace function public.emit_session_event(p_user_id text, p_session_id text, p_type text, p_payload jsonb)
returns void
language plpgsql
set search_path = ''
as $$
declare
    new_id bigint;
begin
    -- One lock for every emitting transaction, whatever users it touches (a
    -- lock per user would fill the lock table in a bulk load): held only from
    -- the commit-time triggers to the end of the commit, it is short.
    perform pg_advisory_xact_lock(7241009);
    insert into public.session_events (user_id, session_id, type, payload, created_at)
    values (p_user_id, p_session_id, p_type, coalesce(p_payload, '{}'::jsonb), clock_timestamp())
    returning id into new_id;
    perform pg_notify('session_events', new_id || ' ' || p_user_id);
end;
$$;

-- Replacing a function keeps its owner and privileges: execute stays revoked as sql/009 left it.
