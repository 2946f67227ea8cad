# Installs the units from /stage/units the way the README says, with the
# configuration the README shows, and foobar.service.
set -e
cp /stage/units/simpletcpunixrelay-* /stage/foobar.service /etc/systemd/system/
cp /stage/units/simpletcpunixrelay.sysusers /usr/lib/sysusers.d/simpletcpunixrelay.conf
systemd-sysusers
mkdir -p /etc/simpletcpunixrelay
echo CONNECT=127.0.0.1:8080 > /etc/simpletcpunixrelay/expose-foobar.env
printf 'LISTEN=127.0.0.1:8081\nCONNECT=/run/foobar-unix/socket\n' \
    > /etc/simpletcpunixrelay/reexpose-foobar.env
echo CONNECT=/run/foobar-unix/socket > /etc/simpletcpunixrelay/activated-8082.env
systemctl daemon-reload
