-- updated_at is the time the row version was written, not the time its
-- transaction began (now()). A change that waited for another's lock on the
-- session row is written after that one committed, so of any two versions of
-- a session the one committed later has the later updated_at. Clients rely on
-- it to keep the newest of the rows they get from responses and from the
-- events stream, whichever arrives last (web/src/api/freshness.ts): with
-- now(), a transaction begun before another's commit but written after it
-- could carry the older time.
create or replace function public.chat_sessions_touch_updated_at()
returns trigger
language plpgsql
set search_path = ''
as $$
begin
    new.updated_at := clock_timestamp();
    return new;
end;
$$;
