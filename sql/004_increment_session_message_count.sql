-- The RPC that counts messages: one atomic UPDATE, so concurrent turns never
-- lose an increment. Returns the new count, or no row when the session does
-- not exist (deleted meanwhile) for that user.

create or replace function public.increment_session_message_count(
    p_user_id    text,
    p_session_id text,
    p_increment  integer default 1
)
returns table (message_count integer, last_message_at timestamptz)
language plpgsql
set search_path = ''
as $$
begin
    if p_increment is null or p_increment < 1 then
        raise exception 'p_increment must be a positive integer, got %', p_increment
            using errcode = '22023';  -- invalid_parameter_value
    end if;
    return query
        update public.chat_sessions s
           set message_count = s.message_count + p_increment,
               last_message_at = now()
         where s.user_id = p_user_id
           and s.session_id = p_session_id
        returning s.message_count, s.last_message_at;
end;
$$;

-- Only the backend may call it: not PostgREST's anon or authenticated roles.
revoke execute on function public.increment_session_message_count(text, text, integer) from public;
do $$
begin
    if exists (select 1 from pg_roles where rolname = 'anon') then
        execute 'revoke execute on function public.increment_session_message_count(text, text, integer) from anon';
    end if;
    if exists (select 1 from pg_roles where rolname = 'authenticated') then
        execute 'revoke execute on function public.increment_session_message_count(text, text, integer) from authenticated';
    end if;
end;
$$;
