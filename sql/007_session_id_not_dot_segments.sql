-- "." and ".." are valid by the id characters but unusable in URLs: fetch and
-- other clients remove such path segments, so the session could never be
-- opened or deleted. NOT VALID: rows made before this rule stay readable.

do $$
begin
    if not exists (select 1 from pg_constraint where conname = 'chat_sessions_session_id_not_dot_segment') then
        alter table public.chat_sessions
            add constraint chat_sessions_session_id_not_dot_segment
            check (session_id not in ('.', '..')) not valid;
    end if;
end;
$$;
